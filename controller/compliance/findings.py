"""A compliance finding: what rule failed on which resource, the evidence, and how to fix it."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from controller.model import Severity


def fingerprint_of(rule: str, resource: str) -> str:
    """Stable per rule and resource, whatever the case the resource was spelled in.

    ARM ids and key URIs are case-insensitive in Azure, so two sweeps that read the same resource in
    different spellings must produce the same fingerprint (alerts are keyed by it).
    """
    digest = hashlib.sha256(f"{rule.upper()}|{resource.strip().rstrip('/').lower()}".encode()).hexdigest()
    return digest[:32]


@dataclass(frozen=True, slots=True)
class Finding:
    """One failed (or not evaluable) rule on one resource.

    ``evidence`` holds the observed values that made the rule fail (never key material);
    ``remediation`` is a concrete step: the az command or the property to set.
    """

    rule: str
    severity: Severity
    resource: str
    title: str
    evidence: Mapping[str, object] = field(default_factory=dict)
    remediation: str = ""

    @property
    def fingerprint(self) -> str:
        return fingerprint_of(self.rule, self.resource)

    def as_json(self) -> dict[str, object]:
        return {
            "rule": self.rule,
            "severity": self.severity.value,
            "resource": self.resource,
            "title": self.title,
            "evidence": dict(self.evidence),
            "remediation": self.remediation,
            "fingerprint": self.fingerprint,
        }
