"""The vault allowlist (CMK_VAULTS) as one object: how key URIs and vault origins are read, and which
vaults the controller may act on.

Built once from the settings (``Settings.vault_policy``) and handed to whatever parses a key URI or a
vault origin. Two questions are kept apart on purpose:

* reading: ``parse_key_id`` / ``parse_vault_origin`` accept any cloud vault plus the allowlisted
  custom origins (the local sandbox's loopback vaults); what a blob envelope or an ARM property names
  is read this way, and a key of another vault is then simply "not ours";
* acting: ``allowed_key`` / ``allowed_vault`` (and ``check``) refuse every vault outside the allowlist
  with VaultNotAllowed, whose message lists the allowed vaults, before any request goes to it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from controller.errors import InvalidKeyId
from controller.model import KeyRef, VaultOrigin, normalise_origin, parse_key_id, parse_vault_origin


class VaultNotAllowed(InvalidKeyId):
    """A well-formed key or vault that is not in the allowlist."""


@dataclass(frozen=True, slots=True)
class VaultPolicy:
    #: The allowed vault origins, normalised (https://host[:port]), in the configured order.
    vaults: tuple[str, ...]

    @classmethod
    def of(cls, entries: Iterable[str]) -> VaultPolicy:
        """The policy for allowlist entries (host names or https origins); raises InvalidKeyId for an
        entry that is not a vault origin."""
        origins: list[str] = []
        for entry in entries:
            origin = normalise_origin(entry)
            if origin not in origins:
                origins.append(origin)
        return cls(tuple(origins))

    def allows(self, vault: VaultOrigin | str) -> bool:
        return (vault.url if isinstance(vault, VaultOrigin) else vault) in self.vaults

    def parse_key_id(self, uri: str) -> KeyRef:
        """A key identifier of any cloud vault or of an allowlisted custom origin (not checked against
        the allowlist: see ``allowed_key``). Raises InvalidKeyId."""
        return parse_key_id(uri, custom_origins=self.vaults)

    def parse_vault_origin(self, value: str) -> VaultOrigin:
        """A cloud vault origin or an allowlisted custom origin (not checked against the allowlist)."""
        return parse_vault_origin(value, custom_origins=self.vaults)

    def check(self, vault: VaultOrigin) -> None:
        """Raise VaultNotAllowed unless ``vault`` is in the allowlist."""
        if not self.allows(vault):
            raise VaultNotAllowed(f"vault {vault.url} is not in CMK_VAULTS (allowed: {', '.join(self.vaults)})")

    def allowed_key(self, uri: str) -> KeyRef:
        """Parse a key identifier and refuse it unless its vault is allowed."""
        key = self.parse_key_id(uri)
        self.check(key.vault)
        return key

    def allowed_vault(self, value: str) -> VaultOrigin:
        """Parse a vault origin (host name or https origin), or take the allowlisted vault a bare vault name
        (``contoso-kv``) names, and refuse it unless it is allowed."""
        if "." not in value and ":" not in value and "/" not in value:
            return self._named_vault(value)
        vault = self.parse_vault_origin(value)
        self.check(vault)
        return vault

    def _named_vault(self, name: str) -> VaultOrigin:
        """The one allowlisted cloud vault (or Managed HSM) called ``name``: the operator's short form."""
        named = [VaultOrigin(origin) for origin in self.vaults if VaultOrigin(origin).name == name.lower()]
        if not named:
            raise VaultNotAllowed(f"no vault named {name!r} in CMK_VAULTS (allowed: {', '.join(self.vaults)})")
        if len(named) > 1:
            raise InvalidKeyId(f"{name!r} names {len(named)} vaults in CMK_VAULTS: write the host "
                               f"({', '.join(vault.host for vault in named)})")
        return named[0]
