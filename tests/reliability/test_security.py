"""Security: the routes refuse callers without their key, and no secret the suite used leaks.

* The HTTP ``events`` function takes a function key (not the Event Grid system key), the Event Grid
  webhook the system key (not a function key), as on Azure: anything else is 401 and changes nothing.
* Everything written over the whole suite (this module runs last: the host's and the sandbox's logs,
  the alerts the sink received, the compliance report in every format) contains none of the secrets in
  play: the storage account key and connection string, the host's keys, the managed-identity header,
  every token issued (sandbox tokens, any JWT, any bearer value), private keys, and the content keys
  of the client-side-encrypted blobs the controller re-wrapped.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import time
import urllib.error
import urllib.request
import uuid

import pytest
from azure.storage.blob import ContainerClient

from emulators.keyvault.credential import TOKEN_PREFIX
from tests.reliability.conftest import RESOURCE_GROUP, REWRAP_ACCOUNT, REWRAP_CONTAINER, VAULT, Estate, key_name, post

pytestmark = pytest.mark.reliability

REPORT_FORMATS = ("json", "md", "sarif", "html")
#: What any token or private key looks like, whoever issued it.
SECRET_PATTERNS = {
    "sandbox token": re.escape(TOKEN_PREFIX) + r"[A-Za-z0-9_-]{8,}",
    "JWT": r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",
    "bearer value": r"(?i)bearer\s+[A-Za-z0-9._~+/-]{16,}",
    "PEM private key": r"PRIVATE KEY-----",
    "JWK private member": r'"(?:dp|dq|qi)"\s*:\s*"',
    "account key field": r"(?i)AccountKey=[A-Za-z0-9+/=]{8,}",
}


def forged_event(estate: Estate, event_id: str) -> bytes:
    key = key_name(0)
    version = estate.seeded["keys"][f"{VAULT}/{key}"]["version"]
    return json.dumps([{
        "id": event_id, "topic": estate.seeded["vaults"][VAULT]["id"], "subject": key,
        "eventType": "Microsoft.KeyVault.KeyNearExpiry", "eventTime": "2026-11-30T12:00:00Z",
        "dataVersion": "1", "metadataVersion": "1",
        "data": {"Id": f"{estate.vault_origin}/keys/{key}/{version}", "VaultName": VAULT, "ObjectType": "Key",
                 "ObjectName": key, "Version": version, "NBF": 1764460800, "EXP": 1796083200},
    }]).encode()


def claimed_event_ids(estate: Estate) -> set[str]:
    return {entity["EventId"] for entity in estate.ledger().list_entities()
            if entity["PartitionKey"].startswith("event-")}


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})  # noqa: S310 - loopback host
    try:
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_each_route_refuses_a_caller_without_its_key_and_changes_nothing(estate, report_figures):
    keys, base = estate.host_keys, estate.functions_url
    webhook = f"{base}/runtime/webhooks/eventgrid?functionName=on_key_event"
    grid = {"aeg-event-type": "Notification"}
    refused = {
        "events without a key": (f"{base}/api/events", {}),
        "events with a wrong key": (f"{base}/api/events?code=not-the-key", {}),
        "events with the Event Grid system key": (f"{base}/api/events?code={keys['eventgrid_extension']}", {}),
        "events with a key header that is wrong": (f"{base}/api/events", {"x-functions-key": keys["function"][:-1]}),
        "webhook without a key": (webhook, grid),
        "webhook with a function key": (f"{webhook}&code={keys['function']}", grid),
        "webhook with a wrong key": (f"{webhook}&code={keys['eventgrid_extension'][:-2]}", grid),
    }
    event_id = f"unauthorised-{uuid.uuid4()}"
    statuses = {label: post(url, forged_event(estate, event_id), headers)[0]
                for label, (url, headers) in refused.items()}
    statuses["report without a key"] = get(f"{base}/api/report")[0]
    statuses["host status with the function key"] = get(f"{base}/admin/host/status",
                                                        {"x-functions-key": keys["function"]})[0]
    accepted = {
        "events with the function key": post(estate.events_url, forged_event(estate, f"{event_id}-a"))[0],
        "webhook with the system key": post(estate.eventgrid_webhook(), forged_event(estate, f"{event_id}-b"), grid)[0],
    }
    report_figures({"refused": statuses, "accepted": accepted})
    assert set(statuses.values()) == {401}, statuses
    assert set(accepted.values()) == {200}, accepted
    claimed = claimed_event_ids(estate)
    assert event_id not in claimed
    assert {f"{event_id}-a", f"{event_id}-b"} <= claimed


def content_keys(estate: Estate) -> list[bytes]:
    """The content keys of the re-wrapped container's blobs, unwrapped as the operator."""
    service = estate.clients.blob_service(RESOURCE_GROUP, REWRAP_ACCOUNT)
    container: ContainerClient = service.get_container_client(REWRAP_CONTAINER)
    found = []
    for blob in container.list_blobs(include=["metadata"]):
        wrapped = json.loads(blob.metadata["encryptiondata"])["WrappedContentKey"]
        crypto = estate.clients.crypto_client(wrapped["KeyId"])
        found.append(crypto.unwrap_key(wrapped["Algorithm"], base64.b64decode(wrapped["EncryptedKey"])).key)
    return found


def compliance_reports(estate: Estate) -> dict[str, str]:
    """Run the compliance sweep now (as an operator does through the admin route) and read every format."""
    master = {"x-functions-key": estate.host_keys["master"]}
    status, _ = post(f"{estate.functions_url}/admin/functions/compliance_sweep", b'{"input": ""}', master)
    assert status == 202
    url = f"{estate.functions_url}/api/report?code={estate.host_keys['function']}"
    deadline = time.monotonic() + 180
    while get(url)[0] != 200:
        assert time.monotonic() < deadline, "no compliance report was stored"
        time.sleep(1)
    return {name: get(f"{url}&format={name}")[1].decode("utf-8", errors="replace") for name in REPORT_FORMATS}


def secret_forms(secret: bytes) -> list[str]:
    """A secret as it could appear in text: raw, base64 (both alphabets), hex."""
    forms = [base64.b64encode(secret).decode(), base64.urlsafe_b64encode(secret).decode().rstrip("="),
             secret.hex(), secret.hex().upper()]
    with contextlib.suppress(UnicodeDecodeError):
        forms.append(secret.decode("utf-8"))
    return [form for form in forms if len(form) >= 16]


def work_items_carrying_secrets(estate: Estate, connection: str, account_key: str) -> None:
    """A careless operator's work items, with the storage connection string and account key where names go:
    each is refused and alerted (WorkItemPoisoned), and the alert must not echo what it was given. So the
    alerts searched below are never empty, even when this module runs on its own."""
    def poisoned() -> int:
        return sum(record["body"].get("reason") == "WorkItemPoisoned" for record in estate.alerts())

    poisoned_before = poisoned()
    items = [
        {"kind": "rewrap", "account": connection, "container": "data", "key_id": f"{estate.vault_origin}/keys/k"},
        {"kind": "reconcile", "key": f"{estate.vault_origin}/keys/{account_key}"},
        {"kind": account_key},
    ]
    for item in items:
        estate.send_work(json.dumps(item).encode())
    deadline = time.monotonic() + 120
    while poisoned() < poisoned_before + len(items):
        assert time.monotonic() < deadline, "the work items carrying secrets were not alerted"
        time.sleep(0.5)


def test_no_secret_in_play_appears_in_any_log_alert_or_report(estate, report_figures):
    connection = estate.values["AzureWebJobsStorage"]
    account_key = dict(part.split("=", 1) for part in connection.split(";") if "=" in part)["AccountKey"]
    work_items_carrying_secrets(estate, connection, account_key)
    reports = compliance_reports(estate)
    ca_key_lines = [line for line in (estate.directory / "ca" / "ca-key.pem").read_text().splitlines()
                    if line and not line.startswith("-----")]
    identity = urllib.request.Request(  # noqa: S310 - the sandbox's loopback identity endpoint
        f"{estate.values['IDENTITY_ENDPOINT']}?api-version=2019-08-01&resource=https://vault.azure.net"
        f"&client_id={estate.values['AZURE_CLIENT_ID']}",
        headers={"X-IDENTITY-HEADER": estate.values["IDENTITY_HEADER"]})
    with urllib.request.urlopen(identity, timeout=10) as response:  # noqa: S310
        token = json.loads(response.read())["access_token"]
    secrets: dict[str, list[str]] = {
        "storage connection string": [connection],
        "storage account key": [account_key],
        "host master key": [estate.host_keys["master"]],
        "host function key": [estate.host_keys["function"]],
        "Event Grid system key": [estate.host_keys["eventgrid_extension"]],
        "identity header": [estate.values["IDENTITY_HEADER"]],
        "controller token": [token],
        "CA private key": [line for line in ca_key_lines if len(line) >= 32],
    }
    keys = content_keys(estate)
    for index, content_key in enumerate(keys):
        secrets[f"content key {index}"] = secret_forms(content_key)
    texts = {
        "functions host log": estate.host_log.read_text(errors="replace"),
        "sandbox log": (estate.directory / "sandbox.log").read_text(errors="replace"),
        "alerts": json.dumps(estate.alerts()),
        **{f"report ({name})": text for name, text in reports.items()},
    }
    leaks = [(secret, where) for secret, forms in secrets.items() for where, text in texts.items()
             if any(form in text for form in forms)]
    patterns = [(label, where) for label, pattern in SECRET_PATTERNS.items() for where, text in texts.items()
                if where != "sandbox log" and re.search(pattern, text)]
    report_figures({"secrets_searched": len(secrets), "content_keys": len(keys),
                    "bytes_searched": {where: len(text) for where, text in texts.items()},
                    "leaks": [f"{secret} in {where}" for secret, where in leaks],
                    "patterns_found": [f"{label} in {where}" for label, where in patterns]})
    assert keys, "the re-wrapped container has no blobs: nothing to search for"
    assert estate.alerts(), "no alert was sent: nothing to search"
    assert leaks == []
    assert patterns == []
