"""`cmkctl sweep` over fakes: one JSON document on stdout, the table, --out, and the exit statuses."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from controller.cli import main
from controller.cli import sweep as sweep_command
from controller.compliance.estate import ReadAspect, ReadFailure
from controller.compliance.report import parse_report
from controller.errors import Forbidden
from controller.settings import load_settings
from tests.unit import estate_builders as eb
from tests.unit.fakes import FakeClock, FakeEstateReader, fake_dependencies

pytestmark = pytest.mark.unit


class RefusingReader:
    """The subscriptions cannot even be listed."""

    def gather(self, subscriptions, now):
        raise Forbidden("list the subscriptions the identity can read: HTTP 403 AuthorizationFailed")


@pytest.fixture
def use_estate(monkeypatch):
    """Make the CLI's dependencies fakes over the given estate (or reader); returns the reader."""

    def use(estate=None, *, reader=None, env=None):
        reader = reader or FakeEstateReader(estate)
        settings = load_settings({"CMK_VAULTS": eb.VAULT_ORIGIN, **(env or {})})
        deps = fake_dependencies(settings, clock=FakeClock(eb.NOW), estate=reader)
        monkeypatch.setattr(sweep_command, "operator_dependencies", lambda: deps)
        return reader

    return use


def purge_protection_off():
    return eb.estate(vaults=(eb.vault(enable_purge_protection=False),))  # CMK-004: high


def test_json_prints_exactly_one_document_the_report(use_estate, capsys):
    use_estate(eb.estate())
    status = main(["sweep", "--format", "json"])
    out = capsys.readouterr().out
    assert status == 0
    report = parse_report(out)  # the whole of stdout is the report
    assert report.generated_at == eb.NOW
    assert [key.key for key in report.keys] == [eb.KEY_URI]


def test_a_finding_at_the_fail_on_severity_exits_1_and_below_it_0(use_estate, capsys):
    use_estate(purge_protection_off())
    assert main(["sweep", "--format", "json"]) == 1
    capsys.readouterr()
    assert main(["sweep", "--format", "json", "--fail-on", "critical"]) == 0


def test_subscriptions_are_passed_to_the_gatherer_and_the_configured_scope_is_the_default(use_estate, capsys):
    reader = use_estate(eb.estate(), env={"CMK_SUBSCRIPTIONS": eb.SUB2})
    main(["sweep", "--subscription", eb.SUB.upper(), "--subscription", eb.SUB2, "--format", "json"])
    main(["sweep", "--format", "json"])
    assert reader.asked == [(eb.SUB, eb.SUB2), (eb.SUB2,)]


@pytest.mark.parametrize("argv", [["sweep", "--subscription", "not-a-guid"], ["sweep", "--format", "pdf"],
                                  ["sweep", "--fail-on", "severe"]])
def test_bad_input_exits_2_naming_it(use_estate, capsys, argv):
    use_estate(eb.estate())
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert "sweep" in capsys.readouterr().err


def test_nothing_evaluated_exits_2(use_estate, capsys):
    failure = ReadFailure(resource=f"/subscriptions/{eb.SUB}", aspect=ReadAspect.STORAGE_ACCOUNTS,
                          reason="HTTP 403 AuthorizationFailed", status_code=403)
    vault_failure = replace(failure, aspect=ReadAspect.VAULTS)
    use_estate(eb.estate(accounts=(), vaults=(), read_failures=(failure, vault_failure)))
    status = main(["sweep", "--format", "json"])
    captured = capsys.readouterr()
    assert status == 2
    assert "nothing could be evaluated" in captured.err
    assert parse_report(captured.out).findings  # the report still says what could not be read


def test_subscriptions_that_cannot_be_listed_exit_2(use_estate, capsys):
    use_estate(reader=RefusingReader())
    assert main(["sweep"]) == 2
    captured = capsys.readouterr()
    assert "HTTP 403" in captured.err
    assert captured.out == ""
    assert main(["sweep", "--format", "json"]) == 2
    assert json.loads(capsys.readouterr().out)["kind"] == "Forbidden"  # still exactly one JSON document


def test_help_ends_with_examples_and_the_exit_statuses(capsys):
    with pytest.raises(SystemExit):
        main(["sweep", "--help"])
    out = capsys.readouterr().out
    assert "examples:" in out and "cmkctl sweep --format sarif" in out
    assert out.rstrip().endswith("3  a service could not be reached (DNS, TLS, connection)")


def test_the_table_fits_80_columns_and_names_each_finding(use_estate, capsys):
    use_estate(purge_protection_off())
    main(["sweep"])
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 80
    assert "CMK-004" in out
    assert "vaults/contoso-cmk" in out
    assert out.splitlines()[0].startswith("1 findings (1 high) over ")


def test_wide_prints_each_resource_id_whole_on_one_line(use_estate, capsys):
    use_estate(purge_protection_off())
    main(["sweep", "--wide"])
    out = capsys.readouterr().out
    assert any(eb.VAULT_ID in line for line in out.splitlines())


def test_out_writes_the_file_and_nothing_to_stdout(use_estate, capsys, tmp_path):
    use_estate(eb.estate())
    target = tmp_path / "report.sarif"
    assert main(["sweep", "--format", "sarif", "--out", str(target)]) == 0
    assert capsys.readouterr().out == ""
    assert json.loads(target.read_text(encoding="utf-8"))["version"] == "2.1.0"


def test_no_progress_display_when_not_on_a_terminal(use_estate, capsys):
    use_estate(eb.estate())
    main(["sweep", "--format", "json"])
    assert capsys.readouterr().err == ""  # pytest's captured stderr is not a terminal
