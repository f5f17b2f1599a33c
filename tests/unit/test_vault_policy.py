"""VaultPolicy: one reading of key URIs and vault origins against the allowlist, one refusal."""

from __future__ import annotations

import pytest

from controller.errors import InvalidKeyId
from controller.vault_policy import VaultNotAllowed, VaultPolicy

pytestmark = pytest.mark.unit

SANDBOX = "https://127.0.0.1:8443"
VERSION = "0123456789abcdef0123456789abcdef"
POLICY = VaultPolicy.of(["Contoso.vault.azure.net", f"{SANDBOX}/", "contoso.vault.azure.net"])


def test_entries_are_normalised_and_deduplicated_in_order() -> None:
    assert POLICY.vaults == ("https://contoso.vault.azure.net", SANDBOX)


def test_an_entry_that_is_not_an_origin_is_refused() -> None:
    with pytest.raises(InvalidKeyId):
        VaultPolicy.of(["http://contoso.vault.azure.net"])


def test_allowed_keys_and_vaults_parse_including_the_custom_origin() -> None:
    key = POLICY.allowed_key(f"{SANDBOX}/keys/cmk/{VERSION}")
    assert (key.vault.url, key.name, key.version) == (SANDBOX, "cmk", VERSION)
    assert POLICY.allowed_vault("CONTOSO.vault.azure.net").url == "https://contoso.vault.azure.net"
    assert POLICY.allows(key.vault) and POLICY.allows(SANDBOX)


def test_a_cloud_vault_outside_the_allowlist_is_read_but_not_allowed() -> None:
    uri = f"https://fabrikam.vault.azure.net/keys/cmk/{VERSION}"
    assert POLICY.parse_key_id(uri).vault.url == "https://fabrikam.vault.azure.net"
    with pytest.raises(VaultNotAllowed) as refused:
        POLICY.allowed_key(uri)
    message = str(refused.value)
    assert "https://fabrikam.vault.azure.net is not in CMK_VAULTS" in message
    assert "https://contoso.vault.azure.net" in message and SANDBOX in message
    with pytest.raises(VaultNotAllowed):
        POLICY.allowed_vault("fabrikam.vault.azure.net")


def test_a_custom_origin_outside_the_allowlist_is_not_even_read() -> None:
    with pytest.raises(InvalidKeyId, match="configured custom origin"):
        POLICY.parse_key_id(f"https://127.0.0.1:9999/keys/cmk/{VERSION}")
    with pytest.raises(InvalidKeyId):
        POLICY.allowed_vault("https://127.0.0.1:9999")


def test_a_bare_vault_name_is_the_allowlisted_vault_of_that_name() -> None:
    assert POLICY.allowed_vault("contoso").url == "https://contoso.vault.azure.net"
    assert POLICY.allowed_vault("CONTOSO").url == "https://contoso.vault.azure.net"
    with pytest.raises(VaultNotAllowed) as refused:
        POLICY.allowed_vault("fabrikam")
    assert str(refused.value) == f"no vault named 'fabrikam' in CMK_VAULTS (allowed: {', '.join(POLICY.vaults)})"


def test_a_bare_name_of_a_vault_and_a_managed_hsm_alike_asks_for_the_host() -> None:
    both = VaultPolicy.of(["contoso.vault.azure.net", "contoso.managedhsm.azure.net"])
    with pytest.raises(InvalidKeyId, match="names 2 vaults in CMK_VAULTS: write the host "
                                           r"\(contoso.vault.azure.net, contoso.managedhsm.azure.net\)"):
        both.allowed_vault("contoso")
