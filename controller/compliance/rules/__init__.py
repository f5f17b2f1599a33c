"""The compliance rule catalogue (RULES.md CMK-000..CMK-020): pure functions of one gathered Estate.

Each rule is ``check(context) -> list[Finding]``; ``evaluate`` runs them all in catalogue order and
sorts the findings (severity, rule, resource). No rule performs I/O.
"""

from controller.compliance.rules.catalogue import CATALOGUE, Rule, Summary, evaluate, summarise
from controller.compliance.rules.context import EXEMPT_TAG, REQUIRED_TAG, RequireCmk, RuleContext, RuleSettings
from controller.reasons import Reason

__all__ = [
    "CATALOGUE",
    "EXEMPT_TAG",
    "REQUIRED_TAG",
    "Reason",
    "RequireCmk",
    "Rule",
    "RuleContext",
    "RuleSettings",
    "Summary",
    "evaluate",
    "summarise",
]
