"""controller.redaction: what has the shape of a secret is scrubbed from log records and alerts; what
people need to read (resource ids, key URIs with their versions, ids, times) is not."""

from __future__ import annotations

import base64
import json
import logging

import pytest

from controller.logs import log_record
from controller.model import Alert, Severity
from controller.reasons import Reason
from controller.redaction import REDACTED, scrub, scrub_value

pytestmark = pytest.mark.unit

#: Azurite's well-known development account key (public): the shape of every storage account key.
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
CONTENT_KEY = bytes(range(7, 39))  # 32 bytes, as a blob's content encryption key
CONNECTION = (f"DefaultEndpointsProtocol=https;AccountName=stcmk;AccountKey={ACCOUNT_KEY};"
              "EndpointSuffix=core.windows.net")
JWT = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJhdWQiOiJodHRwczovL3ZhdWx0LmF6dXJlLm5ldCJ9.c2lnbmF0dXJlLWJ5dGVz"
PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7\nq3Jx\n-----END RSA PRIVATE KEY-----"


@pytest.mark.parametrize("secret", [
    ACCOUNT_KEY,
    base64.b64encode(CONTENT_KEY).decode(),
    base64.urlsafe_b64encode(CONTENT_KEY).decode().rstrip("="),
    CONTENT_KEY.hex(),
    CONTENT_KEY.hex().upper(),
    JWT,
])
def test_a_secret_quoted_anywhere_is_scrubbed(secret):
    for text in (secret, f"unknown work item kind {secret!r}", f"https://kv.vault.azure.net/keys/{secret}/x",
                 json.dumps({"body": {"kind": secret}})):
        scrubbed = scrub(text)
        assert secret not in scrubbed and REDACTED in scrubbed, text


def test_connection_strings_tokens_and_private_keys_lose_their_secret_part():
    assert scrub(CONNECTION) == ("DefaultEndpointsProtocol=https;AccountName=stcmk;AccountKey=[redacted];"
                                 "EndpointSuffix=core.windows.net")
    assert scrub("GET https://st.blob.core.windows.net/c/b?sv=2024-01-01&sig=abc%2Bdef%3D&se=1") == \
        "GET https://st.blob.core.windows.net/c/b?sv=2024-01-01&sig=[redacted]&se=1"
    assert scrub("Authorization: Bearer abcdefghijklmnop.qrstu") == "Authorization: Bearer [redacted]"
    assert scrub(f"key: {PEM} end") == f"key: {REDACTED} end"
    assert "MIIEow" not in scrub("-----BEGIN PRIVATE KEY-----\nMIIEowIBAAKCAQEA7")  # cut off before its end


@pytest.mark.parametrize("text", [
    "/subscriptions/5a9d0000-0000-4000-8000-0000000000a1/resourceGroups/rg-CMK-Prod01/providers/"
    "Microsoft.Storage/storageAccounts/stcmkauto/encryptionScopes/Scope2024Q4",
    "https://kv-cmk-rotation.vault.azure.net/keys/storage-cmk/0123456789abcdef0123456789abcdef",
    "976b8c63-203b-4026-9d4c-dd84a654a3c7/b92e4248-5cad-40e0-848f-4e0c10adc3f8",
    "2026-12-04T13:19:31.166606+00:00",
    "scale|rewrap|stcmk|data||https://kv.vault.azure.net/keys/k/0123456789abcdef0123456789abcdef",
    "records/2026/Patient_Record_Scan_Archive_Final_Version_2.pdf",
    "fingerprint 690d5cd4884493ceaeb52dca65c18e5d",
])
def test_what_people_need_to_read_stays(text):
    assert scrub(text) == text


def test_nested_values_are_scrubbed_and_keep_their_shape():
    value = {"item": {"account": CONNECTION, "keys": [ACCOUNT_KEY, "k1"], "pair": ("a", ACCOUNT_KEY)}, "n": 3}
    scrubbed = scrub_value(value)
    assert ACCOUNT_KEY not in json.dumps(scrubbed)
    assert scrubbed["item"]["keys"][1] == "k1" and isinstance(scrubbed["item"]["pair"], tuple)
    assert scrubbed["n"] == 3


def test_an_alert_quoting_a_secret_carries_it_nowhere():
    alert = Alert(Severity.HIGH, f"work item {ACCOUNT_KEY[:8]} moved", "cmk-work-poison", Reason.WORK_ITEM_POISONED,
                  f"unknown work item kind {ACCOUNT_KEY!r}", "f" * 32, details={"body": CONNECTION})
    assert ACCOUNT_KEY not in alert.message and ACCOUNT_KEY not in json.dumps(alert.details)
    assert alert.title == f"work item {ACCOUNT_KEY[:8]} moved"  # short fragments are not secrets


def test_a_log_record_quoting_a_secret_carries_it_nowhere(caplog):
    logger = logging.getLogger("tests.redaction")
    with caplog.at_level(logging.INFO, logger="tests.redaction"):
        log_record(logger, logging.INFO, f"refused {ACCOUNT_KEY}", {"detail": CONNECTION, "count": 2})
    [record] = caplog.records
    assert ACCOUNT_KEY not in record.getMessage()
    assert ACCOUNT_KEY not in json.dumps(record.custom_dimensions)
    assert record.custom_dimensions["count"] == 2
