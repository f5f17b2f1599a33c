"""Compliance sweep: the estate gathered once, the rule catalogue over it, findings and reports (pure)."""
