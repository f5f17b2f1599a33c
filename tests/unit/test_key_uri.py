"""controller.model: key identifiers, vault origins and vault resource ids."""

from __future__ import annotations

import pytest

from controller.errors import InvalidKeyId, InvalidResourceId
from controller.model import (
    VaultOrigin,
    normalise_origin,
    parse_key_id,
    parse_vault_origin,
    parse_vault_resource_id,
)

pytestmark = pytest.mark.unit

VERSION = "ee059b2bb5bc48398a53b168c6cdcb10"
SANDBOX = "https://127.0.0.1:8443"
SUBSCRIPTION = "6a0c5b2e-1b5f-4c7e-9d3a-2f8e4b1c7d90"


@pytest.mark.parametrize(
    ("uri", "origin", "name", "version"),
    [
        (f"https://contoso.vault.azure.net/keys/cmk/{VERSION}", "https://contoso.vault.azure.net", "cmk", VERSION),
        ("https://contoso.vault.azure.net/keys/cmk", "https://contoso.vault.azure.net", "cmk", None),
        ("https://contoso.vault.azure.net/keys/cmk/", "https://contoso.vault.azure.net", "cmk", None),
        (f"https://contoso.vault.azure.net/keys/cmk/{VERSION}/", "https://contoso.vault.azure.net", "cmk", VERSION),
        (f"https://contoso-cn.vault.azure.cn/keys/cmk/{VERSION}", "https://contoso-cn.vault.azure.cn", "cmk", VERSION),
        ("https://contoso-cn.vault.azure.cn/keys/cmk", "https://contoso-cn.vault.azure.cn", "cmk", None),
        (f"https://gov-kv.vault.usgovcloudapi.net/keys/cmk/{VERSION}", "https://gov-kv.vault.usgovcloudapi.net",
         "cmk", VERSION),
        ("https://gov-kv.vault.usgovcloudapi.net/keys/cmk", "https://gov-kv.vault.usgovcloudapi.net", "cmk", None),
        (f"https://contoso-hsm.managedhsm.azure.net/keys/cmk/{VERSION}", "https://contoso-hsm.managedhsm.azure.net",
         "cmk", VERSION),
        ("https://contoso-hsm.managedhsm.azure.net/keys/cmk", "https://contoso-hsm.managedhsm.azure.net", "cmk", None),
        (f"{SANDBOX}/keys/cmk/{VERSION}", SANDBOX, "cmk", VERSION),
        (f"{SANDBOX}/keys/cmk", SANDBOX, "cmk", None),
        # Normalisation: host case, the default port, surrounding whitespace, version case.
        (f"https://CONTOSO.Vault.Azure.Net:443/keys/cmk/{VERSION.upper()}", "https://contoso.vault.azure.net",
         "cmk", VERSION),
        (f"  https://contoso.vault.azure.net/keys/cmk/{VERSION}\n", "https://contoso.vault.azure.net", "cmk", VERSION),
        (f"HTTPS://contoso.vault.azure.net/KEYS/Cmk-2/{VERSION}", "https://contoso.vault.azure.net", "Cmk-2", VERSION),
        ("https://a1b.vault.azure.net/keys/" + "k" * 127, "https://a1b.vault.azure.net", "k" * 127, None),
    ],
)
def test_key_identifiers_are_parsed(uri: str, origin: str, name: str, version: str | None) -> None:
    key = parse_key_id(uri, custom_origins=[SANDBOX])
    assert key.vault == VaultOrigin(origin)
    assert key.name == name
    assert key.version == version
    assert key.is_versioned is (version is not None)
    assert parse_key_id(key.uri, custom_origins=[SANDBOX]) == key


@pytest.mark.parametrize(
    "uri",
    [
        f"http://contoso.vault.azure.net/keys/cmk/{VERSION}",  # not https
        f"ftp://contoso.vault.azure.net/keys/cmk/{VERSION}",
        f"contoso.vault.azure.net/keys/cmk/{VERSION}",  # no scheme
        f"//contoso.vault.azure.net/keys/cmk/{VERSION}",
        f"/keys/cmk/{VERSION}",
        f"https://contoso.vault.azure.net/secrets/cmk/{VERSION}",  # not a key
        f"https://contoso.vault.azure.net/certificates/cmk/{VERSION}",
        f"https://contoso.vault.azure.net/deletedkeys/cmk/{VERSION}",
        "https://contoso.vault.azure.net/keys",  # no name
        "https://contoso.vault.azure.net/keys/",
        "https://contoso.vault.azure.net/",
        "https://contoso.vault.azure.net",
        f"https://contoso.vault.azure.net/keys/cmk/{VERSION}/extra",  # extra segment
        f"https://contoso.vault.azure.net//keys/cmk/{VERSION}",
        "https://contoso.vault.azure.net/keys/cmk//",
        f"https://contoso.vault.azure.net/keys/cmk/{VERSION[:-1]}",  # 31 characters
        f"https://contoso.vault.azure.net/keys/cmk/{VERSION}0",  # 33 characters
        f"https://contoso.vault.azure.net/keys/cmk/{VERSION[:-1]}g",  # not hexadecimal
        "https://contoso.vault.azure.net/keys/cmk/latest",
        f"https://contoso.vault.azure.net/keys/cmk/{VERSION}?api-version=7.4",  # query
        f"https://contoso.vault.azure.net/keys/cmk/{VERSION}?",
        f"https://contoso.vault.azure.net/keys/cmk/{VERSION}#fragment",
        f"https://contoso.evil.example/keys/cmk/{VERSION}",  # unknown host
        f"https://contoso.vault.azure.net.evil.example/keys/cmk/{VERSION}",
        f"https://vault.azure.net/keys/cmk/{VERSION}",
        f"https://contoso.vault.azure.net./keys/cmk/{VERSION}",
        f"https://127.0.0.1/keys/cmk/{VERSION}",  # a custom host without its configured port
        f"https://127.0.0.1:9443/keys/cmk/{VERSION}",  # another port
        f"https://user@contoso.vault.azure.net/keys/cmk/{VERSION}",  # userinfo
        f"https://user:secret@contoso.vault.azure.net/keys/cmk/{VERSION}",
        f"https://@contoso.vault.azure.net/keys/cmk/{VERSION}",
        f"https://contoso.vault.azure.net:8443/keys/cmk/{VERSION}",  # port on a cloud host
        f"https://contoso.vault.azure.net:99999/keys/cmk/{VERSION}",
        f"https://contoso.vault.azure.net:x/keys/cmk/{VERSION}",
        f"https://[::1/keys/cmk/{VERSION}",
        f"https://ab.vault.azure.net/keys/cmk/{VERSION}",  # vault name too short
        f"https://{'a' * 25}.vault.azure.net/keys/cmk/{VERSION}",  # too long
        f"https://1contoso.vault.azure.net/keys/cmk/{VERSION}",  # starts with a digit
        f"https://con--toso.vault.azure.net/keys/cmk/{VERSION}",  # double hyphen
        f"https://contoso-.vault.azure.net/keys/cmk/{VERSION}",  # ends with a hyphen
        f"https://con_toso.vault.azure.net/keys/cmk/{VERSION}",
        f"https://\u017fecret.vault.azure.net/keys/cmk/{VERSION}",  # long s folds to "s" under IGNORECASE
        f"https://contoso.vault.azure.net/keys/\u212aey/{VERSION}",  # Kelvin sign folds to "k"
        f"https://contoso.vault.azure.net/keys/cmk_1/{VERSION}",  # key names: letters, digits, hyphens
        f"https://contoso.vault.azure.net/keys/cmk.1/{VERSION}",
        f"https://contoso.vault.azure.net/keys/%63mk/{VERSION}",
        "https://contoso.vault.azure.net/keys/" + "k" * 128,
        f"https://contoso.vault.azure.net/keys/cmk\n/{VERSION}",  # urlsplit would delete the newline
        f"https://con\ttoso.vault.azure.net/keys/cmk/{VERSION}",
        f"https://contoso.vault.azure.net/keys/cmk/{VERSION}\n/x",
        f"https://contoso.vault.azure.net/keys/c mk/{VERSION}",
        f"https://contoso.vault.azure.net/keys/cmk/{VERSION}\x00",
        "",
        "   ",
        "https://",
        "keys",
    ],
)
def test_malformed_or_foreign_key_identifiers_are_rejected(uri: str) -> None:
    with pytest.raises(InvalidKeyId):
        parse_key_id(uri, custom_origins=[SANDBOX])


def test_a_key_identifier_must_be_a_string() -> None:
    with pytest.raises(InvalidKeyId):
        parse_key_id(None, custom_origins=[SANDBOX])  # type: ignore[arg-type]


def test_a_custom_origin_is_accepted_only_when_configured() -> None:
    uri = f"{SANDBOX}/keys/cmk/{VERSION}"
    with pytest.raises(InvalidKeyId):
        parse_key_id(uri)
    assert parse_key_id(uri, custom_origins=["https://127.0.0.1:8443/"]).vault.url == SANDBOX
    assert parse_key_id(uri, custom_origins=[SANDBOX]).vault.name is None


def test_a_custom_origin_on_ipv6_keeps_its_brackets() -> None:
    key = parse_key_id(f"https://[::1]:8443/keys/cmk/{VERSION}", custom_origins=["https://[::1]:8443"])
    assert key.vault.url == "https://[::1]:8443"
    assert key.vault.host == "::1"
    assert key.uri == f"https://[::1]:8443/keys/cmk/{VERSION}"


@pytest.mark.parametrize(
    ("value", "origin"),
    [
        ("contoso.vault.azure.net", "https://contoso.vault.azure.net"),
        ("https://contoso.vault.azure.net", "https://contoso.vault.azure.net"),
        ("https://contoso.vault.azure.net/", "https://contoso.vault.azure.net"),
        (" HTTPS://Contoso.Vault.Azure.Net:443 ", "https://contoso.vault.azure.net"),
        ("https://127.0.0.1:8443", "https://127.0.0.1:8443"),
        ("127.0.0.2:8443", "https://127.0.0.2:8443"),
    ],
)
def test_origins_normalise(value: str, origin: str) -> None:
    assert normalise_origin(value) == origin


@pytest.mark.parametrize(
    "value",
    [
        "",
        "http://contoso.vault.azure.net",
        "https://contoso.vault.azure.net/keys",
        "https://contoso.vault.azure.net?x=1",
        "https://contoso.vault.azure.net?",
        "https://contoso.vault.azure.net#top",
        "https://user@contoso.vault.azure.net",
        "https://@contoso.vault.azure.net",
        "https://contoso.vault.azure.net:0x1",
        "https://",
        "https://con toso.vault.azure.net",
        "https://con\ttoso.vault.azure.net",
    ],
)
def test_malformed_origins_are_rejected(value: str) -> None:
    with pytest.raises(InvalidKeyId):
        normalise_origin(value)


@pytest.mark.parametrize(
    ("value", "name", "managed_hsm"),
    [
        ("contoso.vault.azure.net", "contoso", False),
        ("https://contoso-hsm.managedhsm.azure.net", "contoso-hsm", True),
        ("https://gov-kv.vault.usgovcloudapi.net", "gov-kv", False),
        (SANDBOX, None, False),
    ],
)
def test_vault_origins_know_their_name(value: str, name: str | None, managed_hsm: bool) -> None:
    vault = parse_vault_origin(value, custom_origins=[SANDBOX])
    assert vault.name == name
    assert vault.is_managed_hsm is managed_hsm
    assert str(vault) == vault.url


def test_key_refs_compare_names_case_insensitively_and_pin_versions() -> None:
    key = parse_key_id("https://contoso.vault.azure.net/keys/CMK")
    pinned = key.with_version(VERSION.upper())
    assert pinned.version == VERSION
    assert pinned.versionless == key
    assert pinned.same_key(parse_key_id("https://contoso.vault.azure.net/keys/cmk"))
    assert not pinned.same_key(parse_key_id("https://contoso.vault.azure.net/keys/cmk2"))
    assert str(pinned) == f"https://contoso.vault.azure.net/keys/CMK/{VERSION}"
    for bad in ("latest", VERSION + "\n", VERSION[:-1] + "\u0660"):
        with pytest.raises(InvalidKeyId):
            key.with_version(bad)


@pytest.mark.parametrize(
    ("value", "name", "provider_type"),
    [
        (f"/subscriptions/{SUBSCRIPTION}/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/sample-kv",
         "sample-kv", "vaults"),
        (f"/SUBSCRIPTIONS/{SUBSCRIPTION.upper()}/RESOURCEGROUPS/RG/PROVIDERS/MICROSOFT.KEYVAULT/VAULTS/SAMPLE-KV",
         "SAMPLE-KV", "vaults"),
        (f"/subscriptions/{SUBSCRIPTION}/resourceGroups/my.rg_(1)/providers/Microsoft.KeyVault/managedHSMs/hsm-1",
         "hsm-1", "managedHSMs"),
    ],
)
def test_vault_resource_ids_are_parsed(value: str, name: str, provider_type: str) -> None:
    resource_id = parse_vault_resource_id(value)
    assert resource_id.name == name
    assert resource_id.provider_type == provider_type
    assert resource_id.subscription_id == SUBSCRIPTION
    assert parse_vault_resource_id(resource_id.id) == resource_id


@pytest.mark.parametrize(
    "value",
    [
        "",
        "/subscriptions/{subscription-id}/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/sample-kv",
        f"/subscriptions/{SUBSCRIPTION}/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/sample",
        f"/subscriptions/{SUBSCRIPTION}/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/sample-kv/keys/k",
        f"/subscriptions/{SUBSCRIPTION}/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/s",
        f"/subscriptions/{SUBSCRIPTION}/resourceGroups//providers/Microsoft.KeyVault/vaults/sample-kv",
        f"/subscriptions/{SUBSCRIPTION}/resourceGroups/rg./providers/Microsoft.KeyVault/vaults/sample-kv",
        f"/subscriptions/{SUBSCRIPTION}/resourceGroups/r g/providers/Microsoft.KeyVault/vaults/sample-kv",
        f"/subscriptions/{SUBSCRIPTION}/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/sample\n-kv",
        f"/subscriptions/{SUBSCRIPTION}\n/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/sample-kv",
    ],
)
def test_other_resource_ids_are_rejected(value: str) -> None:
    with pytest.raises(InvalidResourceId):
        parse_vault_resource_id(value)
