"""The official-samples runner's judgement (the run itself is `make sdk-samples`: it downloads the sdists)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from emulators import sdk_samples

pytestmark = pytest.mark.unit


def script(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "sample.py"
    path.write_text(body, encoding="utf-8")
    return path


def run(path: Path) -> tuple[bool, float, str]:
    return sdk_samples.run_sample(path, {"PATH": "/usr/bin:/bin"}, timeout=30)


def test_a_sample_that_exits_0_quietly_passes(tmp_path):
    passed, _, why = run(script(tmp_path, "print('RSA Key with name rsaKeyName created')\n"))
    assert passed and why == ""


def test_a_sample_that_catches_an_error_and_prints_it_fails(tmp_path):
    passed, _, why = run(script(tmp_path, "print('something fatal happened')\nprint('(Forbidden) denied')\n"))
    assert not passed and why.startswith("printed an error")


def test_a_traceback_fails_with_its_exception_line(tmp_path):
    passed, _, why = run(script(tmp_path, "raise ValueError('The challenge resource does not match')\n"))
    assert not passed
    assert why == "exit 1: ValueError: The challenge resource does not match"


def test_a_sample_that_hangs_fails_at_its_timeout(tmp_path):
    path = script(tmp_path, "import time\ntime.sleep(60)\n")
    passed, _, why = sdk_samples.run_sample(path, {"PATH": "/usr/bin:/bin"}, timeout=1)
    assert not passed and why == "timed out after 1s"


def test_only_a_failure_not_expected_fails_the_run():
    expected = {"pkg/needs-internet.py": "copies from the internet"}
    assert sdk_samples.judge("pkg/needs-internet.py", False, "exit 1", 1.0, expected).outcome == "expected-fail"
    assert sdk_samples.judge("pkg/needs-internet.py", True, "", 1.0, expected).outcome == "unexpected-pass"
    assert sdk_samples.judge("pkg/hello.py", False, "exit 1", 1.0, expected).outcome == "fail"
    assert sdk_samples.judge("pkg/hello.py", True, "", 1.0, expected).outcome == "pass"


def test_every_expected_failure_names_a_pinned_package_and_gives_a_reason():
    expected = json.loads(sdk_samples.EXPECTATIONS.read_text(encoding="utf-8"))["expectedFailures"]
    for name, reason in expected.items():
        assert name.split("/", 1)[0] in sdk_samples.PACKAGES and name.endswith(".py"), name
        assert len(reason) > 20, name


def test_inputs_the_source_distribution_leaves_out_are_written_beside_the_samples_and_never_replace_one(tmp_path):
    samples = {"azure-storage-blob": tmp_path / "blob" / "samples"}
    samples["azure-storage-blob"].mkdir(parents=True)
    shipped = samples["azure-storage-blob"] / "SampleSource.txt"
    shipped.write_text("as shipped\n", encoding="utf-8")
    sdk_samples.supply_missing_inputs(samples)
    assert shipped.read_text(encoding="utf-8") == "as shipped\n"
    written = sorted(path.relative_to(samples["azure-storage-blob"]).as_posix()
                     for path in samples["azure-storage-blob"].rglob("*") if path.is_file())
    assert written == sorted(sdk_samples.MISSING_INPUTS["azure-storage-blob"])
    assert not any(path.suffix == ".py" for path in samples["azure-storage-blob"].rglob("*"))  # no sample added


def test_a_sample_that_walks_every_container_waits_for_the_other_storage_samples_and_they_for_it():
    import threading

    lock = sdk_samples.AccountLock()
    order: list[str] = []
    started = threading.Event()

    def account_wide() -> None:
        started.set()
        with lock.hold(exclusive=True):
            order.append("walk starts")
        with lock.hold(exclusive=True):  # two account-wide samples one after the other, never together
            order.append("second walk starts")

    with lock.hold(exclusive=False), lock.hold(exclusive=False):  # two samples on their own containers at once
        walker = threading.Thread(target=account_wide)
        walker.start()
        started.wait()
        order.append("own-container samples end")
    walker.join()
    assert order == ["own-container samples end", "walk starts", "second walk starts"]
