"""Every table-printing cmkctl command fits 80 columns (ids shortened) and prints ids whole with --wide."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from controller.cli import keys as keys_command
from controller.cli import main, tables
from controller.cli.common import EXIT_FAILED
from controller.errors import TransientError
from controller.model import Consumer, ConsumerKind, IdentityAccess, KeyRef, KeyVersionInfo, VaultOrigin
from controller.settings import load_settings
from tests.unit.fakes import FakeClock, FakeStorage, FakeVault, fake_dependencies, fake_reconcile_deps

pytestmark = pytest.mark.unit

VAULT = VaultOrigin("https://kv-contoso-cmk-prod-weu1.vault.azure.net")
KEY = KeyRef(VAULT, "storage-account-encryption-key-production")
OLD, NEW = "0123456789abcdef0123456789abcdef", "fedcba9876543210fedcba9876543210"
NOW = datetime(2026, 11, 30, 12, tzinfo=UTC)
GROUP = ("/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg-contoso-production-storage-weu"
         "/providers/Microsoft.Storage/storageAccounts")


def consumers() -> dict[str, Consumer]:
    account = Consumer(ConsumerKind.ACCOUNT, f"{GROUP}/stcontosoprodweu0001", "stcontosoprodweu0001", KEY,
                       KEY.with_version(OLD), identity_access=IdentityAccess.GRANTED)
    scope = Consumer(ConsumerKind.SCOPE, f"{GROUP}/stcontosoprodweu0001/encryptionScopes/scope-invoices-2026",
                     "stcontosoprodweu0001", KEY.with_version(OLD), KEY.with_version(OLD),
                     scope_name="scope-invoices-2026", identity_access=IdentityAccess.GRANTED)
    return {consumer.id: consumer for consumer in (account, scope)}


@pytest.fixture
def key_commands(monkeypatch):
    clock = FakeClock(NOW)
    vault = FakeVault([KeyVersionInfo(OLD, enabled=True, created=NOW - timedelta(days=90)),
                       KeyVersionInfo(NEW, enabled=True, created=NOW - timedelta(hours=1))], clock=clock)
    storage = FakeStorage(consumers())
    deps = fake_dependencies(load_settings({"CMK_VAULTS": VAULT.url}), clock=clock,
                             reconcile=fake_reconcile_deps(storage, vault, clock=clock))
    monkeypatch.setattr(keys_command, "operator_dependencies", lambda: deps)


def widest(text: str) -> int:
    return max(len(line) for line in text.splitlines())


@pytest.mark.parametrize("argv", [["reconcile", "v", "k"], ["rotate", "v", "k"], ["usage", "v", "k"], ["audit"],
                                  ["sweep"]])
def test_every_table_printing_command_offers_wide(argv, capsys):
    with pytest.raises(SystemExit):
        main([*argv, "--help"])
    assert "--wide" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["usage", "reconcile"])
def test_key_tables_fit_80_columns_with_ids_shortened_and_whole_with_wide(command, key_commands, capsys):
    extra = ["--dry-run"] if command == "reconcile" else []
    main([command, VAULT.url, KEY.name, *extra])
    narrow = capsys.readouterr().out
    assert widest(narrow) <= 80, narrow
    assert f"│ {OLD[:8]} " in narrow  # the version column: a short version
    main([command, VAULT.url, KEY.name, *extra, "--wide"])
    wide = capsys.readouterr().out
    assert f"│ {OLD} " in wide
    assert widest(wide) > 80  # not folded: each id on one line
    if command == "reconcile":
        assert "/subscriptions/" not in narrow and "│ stcontosoprodweu0001/encryp" in narrow  # parent/type/name
        assert f"{GROUP}/stcontosoprodweu0001/encryptionScopes/scope-invoices-2026" in wide


def test_resource_ids_keep_their_type_and_name_and_a_child_its_parent():
    assert tables.resource(f"{GROUP}/st1", wide=False) == "storageAccounts/st1"
    assert tables.resource(f"{GROUP}/st1/encryptionScopes/s1", wide=False) == "st1/encryptionScopes/s1"
    assert tables.resource(f"{GROUP}/st1", wide=True) == f"{GROUP}/st1"
    assert tables.resource("https://kv.vault.azure.net", wide=False) == "https://kv.vault.azure.net"


def test_key_identifiers_are_vault_key_and_short_version():
    assert tables.key(KEY.with_version(NEW).uri, wide=False) == (
        "kv-contoso-cmk-prod-weu1/storage-account-encryption-key-production/fedcba98")
    assert tables.key(KEY.uri, wide=True) == KEY.uri
    assert tables.version(None, wide=False) == "-"


def test_reconcile_summary_prints_the_counts_in_80_columns_or_as_one_json_document(key_commands, capsys):
    main(["reconcile", VAULT.url, KEY.name, "--dry-run", "--summary"])
    text = capsys.readouterr().out
    assert widest(text) <= 80, text
    assert text.splitlines() == [
        "key: kv-contoso-cmk-prod-weu1/storage-account-encryption-key-production",
        "target version: fedcba98",
        "progress: 0 done, 1 pending, 1 blocked (dry run: nothing changed)",
    ]
    main(["reconcile", VAULT.url, KEY.name, "--dry-run", "--summary", "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert summary["key"] == KEY.uri and summary["target_version"] == NEW and summary["dry_run"] is True
    assert (summary["done"], summary["pending"], summary["blocked"]) == (0, 1, 1)


def test_usage_says_blobs_were_not_counted_when_no_container_is_registered(key_commands, capsys):
    """No CMK_REWRAP_TARGETS and no account tag: the blob evidence is missing, which is not 0 blobs. The vault is
    named as operators write it, by its bare name."""
    main(["usage", VAULT.name or "", KEY.name, "--json"])
    versions = json.loads(capsys.readouterr().out)["versions"]
    assert [version["blobs"] for version in versions] == [None, None]
    assert all("no client-side-encrypted container is registered" in version["message"] for version in versions)
    main(["usage", VAULT.name or "", KEY.name, "--wide"])
    table = capsys.readouterr().out
    assert table.count("│ not counted │") == 2, table  # the blobs column of each version


def test_reconcile_summary_says_which_writes_failed_transiently_and_are_retried(monkeypatch, capsys):
    clock = FakeClock(NOW)
    vault = FakeVault([KeyVersionInfo(OLD, enabled=True, created=NOW - timedelta(days=90)),
                       KeyVersionInfo(NEW, enabled=True, created=NOW - timedelta(days=2))], clock=clock)
    storage = FakeStorage({consumer.id: consumer for consumer in consumers().values()
                           if consumer.kind is ConsumerKind.ACCOUNT})  # lagging past the adoption window
    storage.fail_for = dict.fromkeys(storage.consumers, TransientError("HTTP 503 ServiceUnavailable"))
    deps = fake_dependencies(load_settings({"CMK_VAULTS": VAULT.url}), clock=clock,
                             reconcile=fake_reconcile_deps(storage, vault, clock=clock))
    monkeypatch.setattr(keys_command, "operator_dependencies", lambda: deps)
    assert main(["reconcile", VAULT.url, KEY.name, "--summary"]) == EXIT_FAILED
    assert "1 writes failed transiently: retried through the work queue" in capsys.readouterr().out.splitlines()
    assert main(["reconcile", VAULT.url, KEY.name, "--summary", "--json"]) == EXIT_FAILED
    assert json.loads(capsys.readouterr().out)["retrying"] == 1
