"""`cmkctl events parse`: prints the normalised events, or the reason and exit status 2."""

from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from controller.cli import main

pytestmark = pytest.mark.unit

EVENTS = Path(__file__).resolve().parents[1] / "data" / "events"
VAULT = "sample-kv.vault.azure.net"


def test_parse_prints_the_normalised_event(capsys):
    status = main(["events", "parse", str(EVENTS / "eventgrid_key_new_version_created.json"), "--vaults", VAULT])
    out = capsys.readouterr().out
    assert status == 0
    [event] = json.loads(out)
    assert event["kind"] == "new_version"
    assert event["key"] == "https://sample-kv.vault.azure.net/keys/cmk-storage/ee059b2bb5bc48398a53b168c6cdcb10"
    assert event["key_name"] == "cmk-storage"
    assert event["vault_resource_id"].endswith("/providers/Microsoft.KeyVault/vaults/sample-kv")
    assert event["expires"].startswith("2019-05-28T")


def test_parse_reads_standard_input(monkeypatch, capsys):
    payload = (EVENTS / "eventgrid_key_new_version_created.json").read_bytes()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(payload)))
    assert main(["events", "parse", "-", "--vaults", VAULT]) == 0
    assert json.loads(capsys.readouterr().out)[0]["kind"] == "new_version"


def test_parse_takes_the_allowlist_from_the_setting(monkeypatch, capsys):
    monkeypatch.setenv("CMK_VAULTS", "other.vault.azure.net")
    status = main(["events", "parse", str(EVENTS / "eventgrid_key_new_version_created.json")])
    captured = capsys.readouterr()
    assert status == 2
    assert json.loads(captured.out) == []
    assert "vault_not_allowed" in captured.err


@pytest.mark.parametrize(
    ("content", "reason"),
    [(b"not json at all", "not_json"), (b"{}" + b" " * (1024 * 1024), "too_large"), (b"[]", None)],
)
def test_invalid_input_prints_the_reason_and_exits_2(tmp_path, capsys, content, reason):
    path = tmp_path / "delivery.json"
    path.write_bytes(content)
    assert main(["events", "parse", str(path), "--vaults", VAULT]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cmkctl: invalid delivery:")
    if reason:
        assert reason in err


def test_missing_file_and_missing_allowlist_exit_2(tmp_path, monkeypatch, capsys):
    assert main(["events", "parse", str(tmp_path / "absent.json"), "--vaults", VAULT]) == 2
    missing = capsys.readouterr()
    assert json.loads(missing.out)["error"] in missing.err  # its output is JSON: the failure one document too
    monkeypatch.delenv("CMK_VAULTS", raising=False)
    assert main(["events", "parse", str(EVENTS / "eventgrid_key_new_version_created.json")]) == 2
    unset = capsys.readouterr()
    assert "CMK_VAULTS" in unset.err
    assert json.loads(unset.out) == {"error": unset.err.strip().removeprefix("cmkctl: "), "kind": "SettingsError"}


def test_the_console_script_is_installed():
    cmkctl = shutil.which("cmkctl", path=str(Path(sys.executable).parent))
    assert cmkctl, "cmkctl must be installed as a console script (pip install -e .)"
    done = subprocess.run(  # noqa: S603
        [cmkctl, "events", "parse", str(EVENTS / "subscription_validation.json"), "--vaults", VAULT],
        capture_output=True, text=True, check=False, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "validation_code" in done.stdout


@pytest.mark.parametrize("argv", [["events", "parse"], ["reconcile"], ["rotate"], ["usage"], ["rewrap"]])
def test_every_command_helps_with_examples_and_the_exit_statuses(argv, capsys):
    from controller.cli import main

    with pytest.raises(SystemExit) as done:
        main([*argv, "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert "examples:\n  cmkctl " + argv[-1 if argv[0] != "events" else 0] in text
    for status in ("  0  ok", "  1  findings", "  2  bad input", "  3  a service could not be reached"):
        assert status in text
    assert max(len(line) for line in text.splitlines()) <= 120


def _leaf_commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command path of the parser tree that runs something (``events parse``, ``rotate`` ...)."""
    groups = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    if not groups:
        return [path]
    return [leaf for group in groups for name, child in group.choices.items()
            for leaf in _leaf_commands(child, (*path, name))]


def test_no_command_is_left_without_examples_and_exit_statuses(capsys):
    """The list above is not the only guard: every command cmkctl has, found by walking its parser."""
    from controller.cli.main import build_parser, main

    leaves = _leaf_commands(build_parser())
    assert {"audit", "sweep", "reconcile", "rotate", "usage", "rewrap"} <= {leaf[-1] for leaf in leaves}
    for leaf in leaves:
        with pytest.raises(SystemExit) as done:
            main([*leaf, "--help"])
        assert done.value.code == 0, leaf
        text = capsys.readouterr().out
        assert "examples:\n  cmkctl " + " ".join(leaf) in text, leaf
        assert "exit status:\n  0  ok\n  1  findings" in text, leaf
        assert "  3  a service could not be reached" in text, leaf


@pytest.mark.parametrize("until", ["yesterday", "2026-12-01T09:00:00"])
def test_audit_refuses_an_until_that_is_not_an_instant_with_a_zone(until, capsys):
    from controller.cli import main

    with pytest.raises(SystemExit) as done:
        main(["audit", "--until", until])
    assert done.value.code == 2
    assert "--until" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["rotate", "contoso-kv", "k", "--wait", "-5"],
    ["rotate", "contoso-kv", "k", "--wait", "nan"],
    ["rotate", "contoso-kv", "k", "--wait", "1e12"],
    ["rewrap", "--account", "st", "--container", "c", "--key", "kv/k", "--concurrency", "0"],
    ["rewrap", "--account", "st", "--container", "c", "--key", "kv/k", "--concurrency", "1000000"],
    ["rewrap", "--account", "st", "--container", "c", "--key", "kv/k", "--concurrency", "8.5"],
    ["rewrap", "--account", "st", "--container", "c", "--key", "kv/k", "--concurrency", "1_0"],
    ["rewrap", "--account", "st", "--container", "c", "--key", "kv/k", "--concurrency", "\u0663"],  # Arabic-Indic 3
    ["rotate", "contoso-kv", "k", "--wait", "1_0"],
    ["rotate", "contoso-kv", "k", "--wait", "inf"],
])
def test_negative_or_absurd_numbers_are_bad_input(argv, capsys):
    from controller.cli import main

    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 2
    printed = capsys.readouterr()
    assert "outside" in printed.err or "is not a number" in printed.err
    if argv[0] == "rewrap":  # its only output is JSON: the refusal is one JSON document
        assert json.loads(printed.out)["kind"] == "InvalidInput"
    else:
        assert printed.out == ""  # no JSON asked for: nothing on stdout


@pytest.mark.parametrize(("argv", "value"), [
    (["rotate", "contoso-kv", "k", "--wait", "300"], 300.0),
    (["rotate", "contoso-kv", "k", "--wait", "0.5"], 0.5),
    (["rewrap", "--account", "st", "--container", "c", "--key", "kv/k", "--concurrency", "16"], 16),
])
def test_plain_numbers_within_their_range_are_taken(argv, value):
    from controller.cli.main import build_parser

    args = build_parser().parse_args(argv)
    assert (args.wait if argv[0] == "rotate" else args.concurrency) == value


@pytest.mark.parametrize("argv", [
    ["rotate", "contoso-kv", "k", "--wait", "-5", "--json"],
    ["usage", "contoso-kv", "--json"],
    ["audit", "--since", "7d", "--format", "json", "--until", "yesterday"],
    ["sweep", "--format=json", "--subscription", "not-a-guid"],
    ["rewrap", "--account", "st", "--container", "c", "--key", "kv/k", "--concurrency", "0"],  # JSON is its output
    ["events", "parse"],
])
def test_a_bad_argument_still_prints_one_json_document_when_json_was_asked_for(argv, capsys):
    from controller.cli import main

    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 2
    printed = capsys.readouterr()
    document = json.loads(printed.out)  # exactly one document: json.loads refuses anything after it
    assert document["kind"] == "InvalidInput"
    assert document["error"].startswith(f"cmkctl {' '.join(argv[:2] if argv[0] == 'events' else argv[:1])}: error: ")
    assert document["error"] in printed.err
