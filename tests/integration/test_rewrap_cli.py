"""`cmkctl rewrap` against Azurite and the sandbox vault: run here, resume, dry run, fan out."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from azure.storage.queue import QueueClient

from controller import service
from controller.cli import main
from controller.cli.common import operator_dependencies
from emulators.identity_endpoint import ManagedIdentityEndpoint
from emulators.keyvault import Principal
from emulators.keyvault.state import FaultConfig
from tests.integration.test_rewrap_adapters import CONTROLLER, VAULT, Sandbox, assert_all_on, populate
from tests.integration.test_rewrap_adapters import sandbox as sandbox  # noqa: PLC0414 - the fixture
from tests.support.egress import proxy_settings

pytestmark = pytest.mark.integration


CONTROLLER_CLIENT_ID = "c1000000-0000-0000-0000-00000000c11d"


@pytest.fixture(scope="module")
def identity_endpoint() -> Iterator[ManagedIdentityEndpoint]:
    """The controller's managed identity, served the App Service way: the CLI's credential finds it."""
    identities = {CONTROLLER_CLIENT_ID: Principal(oid=CONTROLLER, appid=CONTROLLER_CLIENT_ID)}
    with ManagedIdentityEndpoint(identities) as endpoint:
        yield endpoint


@pytest.fixture
def cli_env(
    sandbox: Sandbox, identity_endpoint: ManagedIdentityEndpoint, monkeypatch: pytest.MonkeyPatch
) -> Sandbox:
    monkeypatch.setenv("CMK_VAULTS", sandbox.origin)
    assert sandbox.kv.proxy is not None  # the vault at its Azure host name: the CLI reaches it through the proxy
    for name, value in proxy_settings(sandbox.kv.proxy).items():
        monkeypatch.setenv(name, value)
    for name, value in identity_endpoint.environ().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AZURE_CLIENT_ID", CONTROLLER_CLIENT_ID)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", sandbox.kv.ca_path)
    monkeypatch.setenv("AzureWebJobsStorage", sandbox.connection_string)
    monkeypatch.setenv("CMK_LEDGER_TABLE", sandbox.table.table_name)
    monkeypatch.setenv("CMK_WORK_QUEUE", f"w{sandbox.table.table_name[2:]}")
    monkeypatch.setenv("BLOBS", sandbox.connection_string)
    return sandbox


def rewrap_args(world: Sandbox, *extra: str) -> list[str]:
    vault = world.origin.removeprefix("https://")
    return [
        "rewrap", "--account", "devstoreaccount1", "--container", world.container,
        "--key", f"{vault}/{world.key_name}", "--connection-string-setting", "BLOBS", *extra,
    ]


def test_rewrap_runs_to_the_current_version_and_prints_the_report(
    cli_env: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    written = populate(cli_env, 10)
    status = main(rewrap_args(cli_env, "--concurrency", "4"))
    captured = capsys.readouterr()
    out = captured.out
    assert status == 0, captured.err
    [report] = json.loads(out)
    assert report["counts"]["rewrapped"] == 10
    assert report["target_key_id"] == cli_env.new_key_id  # versionless --key: the current version
    assert report["complete"] is True
    assert_all_on(cli_env, written, cli_env.new_key_id)


def test_dry_run_writes_nothing(cli_env: Sandbox, capsys: pytest.CaptureFixture[str]) -> None:
    populate(cli_env, 3)
    assert main(rewrap_args(cli_env, "--dry-run")) == 0
    [report] = json.loads(capsys.readouterr().out)
    assert report["dry_run"] is True
    assert len(report["planned"]) == 3
    assert all(cli_env.key_id_of(f"doc/{i:04d}.txt") == cli_env.old_key_id for i in range(3))


def test_to_version_and_malformed_envelopes_give_exit_status_1(
    cli_env: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    populate(cli_env, 2)
    cli_env.container_client().upload_blob("broken", b"x", metadata={"encryptiondata": "[]"})
    old_version = cli_env.old_key_id.rsplit("/", 1)[1]
    assert main(rewrap_args(cli_env, "--to-version", old_version)) == 1
    [report] = json.loads(capsys.readouterr().out)
    assert report["counts"]["already_current"] == 2
    assert report["problems"] == [{"name": "broken", "reason": "malformed_envelope", "detail": "not_an_object"}]


@pytest.mark.parametrize(
    ("argument", "value"),
    [("--key", "evil.example.com/k"), ("--key", "nokey"), ("--concurrency", "0"), ("--account", "UPPER"),
     ("--blob-endpoint", "http://127.0.0.1:10000/devstoreaccount1")],  # a token is sent over TLS only
)
def test_invalid_arguments_exit_2(
    cli_env: Sandbox, capsys: pytest.CaptureFixture[str], argument: str, value: str
) -> None:
    args = rewrap_args(cli_env)
    if argument in args:
        args[args.index(argument) + 1] = value
    else:
        args += [argument, value]
    try:
        status = main(args)
    except SystemExit as refused:  # refused while parsing (a number out of range): argparse's exit 2
        status = refused.code
    assert status == 2
    captured = capsys.readouterr()
    assert "cmkctl" in captured.err
    assert json.loads(captured.out)["error"] in captured.err  # its output is JSON: the refusal one document


def test_enqueue_fans_out_one_item_per_prefix(cli_env: Sandbox, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(rewrap_args(cli_env, "--enqueue", "--prefix", "a/", "--prefix", "b/"))
    assert status == 0
    queue = QueueClient.from_connection_string(cli_env.connection_string, f"w{cli_env.table.table_name[2:]}")
    messages = [json.loads(base64.b64decode(m.content)) for m in queue.peek_messages(max_messages=10)]
    queue.delete_queue()
    assert sorted(m["prefix"] for m in messages) == ["a/", "b/"]
    assert {m["key_id"] for m in messages} == {cli_env.new_key_id}
    assert json.loads(capsys.readouterr().out)["enqueued"]


def test_rewrite_mode_gives_new_content_keys(cli_env: Sandbox, capsys: pytest.CaptureFixture[str]) -> None:
    written = populate(cli_env, 4)
    before = {b.name: b.metadata["encryptiondata"] for b in cli_env.container_client().list_blobs(include=["metadata"])}
    status = main(rewrap_args(cli_env, "--mode", "rewrite"))
    captured = capsys.readouterr()
    assert status == 0, captured.err
    [report] = json.loads(captured.out)
    assert report["mode"] == "rewrite"
    assert report["counts"] == {
        "rewritten": 4, "superseded": 0, "not_encrypted": 0, "skipped_unknown_key": 0, "skipped_malformed": 0,
        "failed": 0,
        "vanished": 0,
    }
    assert report["writes"] == 4 and report["problems"] == []
    assert_all_on(cli_env, written, cli_env.new_key_id)
    after = {b.name: b.metadata["encryptiondata"] for b in cli_env.container_client().list_blobs(include=["metadata"])}
    assert all(
        json.loads(after[name])["WrappedContentKey"]["EncryptedKey"]
        != json.loads(before[name])["WrappedContentKey"]["EncryptedKey"]
        for name in written
    )


def test_an_encryption_scope_needs_rewrite_mode(cli_env: Sandbox, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(rewrap_args(cli_env, "--encryption-scope", "scope1")) == 2
    assert "rewrite" in capsys.readouterr().err


def test_scale_out_enqueues_the_lister_once_and_follow_shows_the_job_across_workers(
    cli_env: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    written = populate(cli_env, 12)
    assert main(rewrap_args(cli_env, "--scale-out", "--concurrency", "2")) == 0
    [job] = json.loads(capsys.readouterr().out)
    assert job["enqueued"] is True and job["pages_listed"] == 0 and not job["finished"]

    # The function app's workers: here, process_work over the queue until it is empty.
    deps = operator_dependencies(blob_endpoint=None, blob_connection_setting="BLOBS")
    queue = QueueClient.from_connection_string(cli_env.connection_string, os.environ["CMK_WORK_QUEUE"])
    kinds = []
    while messages := list(queue.receive_messages(max_messages=8)):
        for message in messages:
            body = base64.b64decode(message.content).decode()
            kinds.append(json.loads(body)["kind"])
            service.process_work(body, deps)
            queue.delete_message(message)
    assert kinds == ["rewrap", "rewrap_page"]

    status = main(rewrap_args(cli_env, "--scale-out", "--concurrency", "2", "--follow", "--interval", "0.5",
                              "--no-progress"))
    out = capsys.readouterr().out
    assert status == 0
    [job] = json.loads(out)
    assert job["enqueued"] is False  # the job had started: only its progress is shown
    assert job["finished"] and (job["pages_listed"], job["pages_done"]) == (1, 1)
    assert job["counts"] == {"rewrapped": 12}
    assert list(queue.peek_messages()) == []
    assert_all_on(cli_env, written, cli_env.new_key_id)


def test_follow_ends_with_exit_1_when_a_page_was_given_up(cli_env: Sandbox, capsys: pytest.CaptureFixture[str]) -> None:
    populate(cli_env, 5)
    assert main(rewrap_args(cli_env, "--scale-out", "--concurrency", "2")) == 0
    capsys.readouterr()
    deps = operator_dependencies(blob_endpoint=None, blob_connection_setting="BLOBS")
    queue = QueueClient.from_connection_string(cli_env.connection_string, os.environ["CMK_WORK_QUEUE"])
    [lister] = queue.receive_messages(max_messages=1)
    service.process_work(base64.b64decode(lister.content).decode(), deps)
    queue.delete_message(lister)
    # The page item's retries are exhausted: the queue trigger gives it up (then it is on the poison queue).
    [page] = queue.receive_messages(max_messages=1)
    service.give_up_work(base64.b64decode(page.content).decode(), "still failing after 5 attempts: Unreachable", deps)
    queue.delete_message(page)

    status = main(rewrap_args(cli_env, "--scale-out", "--follow", "--interval", "0.5", "--no-progress"))

    assert status == 1
    [job] = json.loads(capsys.readouterr().out)
    assert job["finished"] and (job["pages_listed"], job["pages_done"], job["pages_failed"]) == (1, 0, 1)
    assert job["counts"] == {"failed": 5} and job["blobs"] == 5
    assert [problem["name"] for problem in job["problems"]] == [f"doc/{index:04d}.txt" for index in range(5)]
    assert {problem["reason"] for problem in job["problems"]} == {"page_failed"}


def test_follow_needs_scale_out(cli_env: Sandbox, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(rewrap_args(cli_env, "--follow")) == 2
    assert "--follow follows a --scale-out job" in capsys.readouterr().err


def test_ctrl_c_while_the_vault_hangs_stops_the_rewrap_and_its_checkpoint_lets_a_rerun_finish(
    cli_env: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGINT while every unwrap waits on a vault that does not answer: the command stops with 130 and one
    JSON document (its worker threads, blocked in the requests, do not hold the process), and the next run
    resumes from what was checkpointed and puts every blob on the new version."""
    written = populate(cli_env, 6)
    state = cli_env.kv.vault(VAULT)
    state.faults = FaultConfig(latency_ms=120_000, operations=["KeyUnwrap"])  # hangs past the wait below
    command = subprocess.Popen(  # noqa: S603 - the project's own console script, with the test's environment
        [str(Path(sys.executable).parent / "cmkctl"), *rewrap_args(cli_env, "--concurrency", "2")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while state.counters.in_flight("KeyUnwrap") < 1 and command.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)  # until an unwrap waits on the vault (not a timing assertion)
        assert state.counters.in_flight("KeyUnwrap") >= 1 and command.poll() is None, "no unwrap reached the vault"
        command.send_signal(signal.SIGINT)
        out, err = command.communicate(timeout=60)
    finally:
        command.kill()
        state.faults = FaultConfig()
    assert command.returncode == 130, err
    assert err.strip().splitlines() == ["cmkctl: interrupted (work done so far is checkpointed)"]
    assert json.loads(out)["kind"] == "Interrupted"

    assert main(rewrap_args(cli_env)) == 0
    [report] = json.loads(capsys.readouterr().out)
    assert report["complete"] is True
    assert_all_on(cli_env, written, cli_env.new_key_id)
