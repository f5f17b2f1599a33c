"""Drift: what resource events make the controller re-read, and the targeted re-evaluation and alerts
(controller/compliance/drift.py, service.handle_resource_events) over hand-built estates and fakes."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from controller import service
from controller.alert_desk import AlertDesk
from controller.alerts import ChannelKind, ChannelRoute, Transition
from controller.compliance.drift import (
    DRIFT_RULES,
    RE_READ_MARGIN,
    REMEMBERED_RE_READS,
    CompletedReReads,
    Coverage,
    DriftFocus,
    ListedVault,
    Selection,
    coverage_of,
    evaluate_drift,
    scope_vaults,
    select,
)
from controller.compliance.estate import NetworkAcls
from controller.compliance.rules.catalogue import CATALOGUE
from controller.compliance.rules.context import RuleSettings
from controller.errors import TransientError
from controller.model import Severity
from controller.resource_events import DriftTarget, ResourceEvent, ResourceEventKind, TargetKind
from controller.settings import load_settings
from tests.unit import estate_builders as eb
from tests.unit.fakes import FakeAlertLedger, FakeChannel, FakeClock, FakeEstateReader, FakeLedger, fake_dependencies

pytestmark = pytest.mark.unit

OTHER_VAULT_NAME = "fabrikam-cmk"
OTHER_VAULT_ID = eb.VAULT_ID.replace(eb.VAULT_NAME, OTHER_VAULT_NAME)
OTHER_VAULT_URI = eb.VAULT_URI.replace(eb.VAULT_NAME, OTHER_VAULT_NAME)
FIREWALL_ON = NetworkAcls(default_action="Deny", bypass="None")


def two_vault_estate(**vault_overrides: object):
    """acct1 uses contoso-cmk; acct2 uses fabrikam-cmk (both compliant unless overridden)."""
    first = eb.vault(**vault_overrides)
    second = eb.vault(name=OTHER_VAULT_NAME, vault_id=OTHER_VAULT_ID, vault_uri=OTHER_VAULT_URI)
    accounts = (eb.account("acct1"),
                eb.account("acct2", key_vault_uri=OTHER_VAULT_URI,
                           current=f"{OTHER_VAULT_URI.rstrip('/')}/keys/{eb.KEY_NAME}/{eb.V2}"))
    return eb.estate(accounts=accounts, vaults=(first, second))


def listed(estate):
    return [ListedVault(id=vault.id, vault_uri=vault.vault_uri) for vault in estate.vaults]


def event(target: DriftTarget, event_id: str = "e1", *, kind: ResourceEventKind = ResourceEventKind.WRITE):
    return ResourceEvent(event_id=event_id, kind=kind, event_type="Microsoft.Resources.ResourceWriteSuccess",
                         subscription_id=eb.SUB, resource_id=target.resource_id,
                         operation_name=f"Microsoft.KeyVault/vaults/{kind.value}", target=target, event_time=eb.NOW)


VAULT_CHANGED = DriftTarget(TargetKind.VAULT, eb.VAULT_ID.lower())


# --- what is read ---------------------------------------------------------------------------------------


def test_a_vault_event_reads_the_vault_and_every_account_using_it_but_not_the_others():
    estate = two_vault_estate()
    chosen = select(DriftFocus.of([VAULT_CHANGED]), estate.storage_accounts, listed(estate))
    assert chosen.vaults == {eb.VAULT_ID.lower()}
    assert chosen.accounts == {eb.account_id("acct1").lower()}
    assert chosen.gone == frozenset()


def test_an_account_event_reads_the_account_its_vault_and_that_vault_s_other_consumers():
    estate = two_vault_estate()
    estate = replace(estate, storage_accounts=(*estate.storage_accounts, eb.account("acct3")))
    chosen = select(DriftFocus.of([DriftTarget(TargetKind.ACCOUNT, eb.account_id("acct1").lower())]),
                    estate.storage_accounts, listed(estate))
    assert chosen.vaults == {eb.VAULT_ID.lower()}
    assert chosen.accounts == {eb.account_id("acct1").lower(), eb.account_id("acct3").lower()}


def test_a_deleted_vault_reads_every_account_whose_key_names_no_listed_vault():
    estate = two_vault_estate()
    remaining = [vault for vault in listed(estate) if vault.id != eb.VAULT_ID]
    chosen = select(DriftFocus.of([VAULT_CHANGED]), estate.storage_accounts, remaining)
    assert chosen.vaults == frozenset()
    assert chosen.accounts == {eb.account_id("acct1").lower()}
    assert chosen.gone == {eb.VAULT_ID.lower()}


def test_a_role_assignment_on_a_resource_group_touches_every_vault_below_it():
    estate = two_vault_estate()
    group = eb.VAULT_ID.split("/providers/")[0].lower()
    chosen = select(DriftFocus.of([DriftTarget(TargetKind.SCOPE, group)]), estate.storage_accounts, listed(estate))
    assert chosen.vaults == {eb.VAULT_ID.lower(), OTHER_VAULT_ID.lower()}


def test_sweep_only_rules_are_never_re_evaluated_by_drift():
    assert {rule.id for rule in DRIFT_RULES}.isdisjoint({"CMK-017", "CMK-018", "CMK-020"})


def test_sweep_only_rules_are_not_run_even_when_the_coverage_would_keep_their_findings():
    """CMK-020 (two accounts share a key beyond the limit) is the sweep's to decide, whatever a coverage says."""
    shared = eb.estate(accounts=(eb.account("acct1"), eb.account("acct3")))
    everything = Coverage(rules=frozenset(rule.id for rule in CATALOGUE), resources=frozenset(),
                          complete_origins=frozenset({eb.VAULT_ORIGIN}), listed_origins=frozenset({eb.VAULT_ORIGIN}),
                          unlisted_complete=False)
    result = evaluate_drift(shared, everything, RuleSettings(max_accounts_per_key=1), eb.NOW)
    assert result.findings == () and result.coverage is everything


def test_ids_lose_trailing_slashes_and_case_but_nothing_else():
    upper_x = eb.VAULT_ID.replace(eb.VAULT_NAME, "KeysX")  # a vault name may end in X
    focus = DriftFocus.of([DriftTarget(TargetKind.VAULT, f" {upper_x}// "),
                           DriftTarget(TargetKind.ACCOUNT, eb.account_id("acct1") + "/"),
                           DriftTarget(TargetKind.SCOPE, f"/subscriptions/{eb.SUB}/")])
    assert focus == DriftFocus(vaults=frozenset({upper_x.lower()}),
                               accounts=frozenset({eb.account_id("acct1").lower()}),
                               scopes=frozenset({f"/subscriptions/{eb.SUB}"}))
    assert focus.as_json() == {"vaults": [upper_x.lower()], "accounts": [eb.account_id("acct1").lower()],
                               "scopes": [f"/subscriptions/{eb.SUB}"]}


def test_a_vault_uri_with_trailing_slashes_still_names_its_vault():
    estate = two_vault_estate()
    listing = [ListedVault(id=eb.VAULT_ID, vault_uri=eb.VAULT_ORIGIN + "//"),
               ListedVault(id=OTHER_VAULT_ID, vault_uri=OTHER_VAULT_URI)]
    chosen = select(DriftFocus.of([VAULT_CHANGED]), estate.storage_accounts, listing)
    assert chosen.accounts == {eb.account_id("acct1").lower()}
    assert chosen.complete_origins == {eb.VAULT_ORIGIN}


def test_a_key_named_keys_is_still_found_in_its_vault():
    """The vault is what precedes the first "/keys/" of a key URI, even when the key itself is called keys."""
    keys_key = eb.account("acct1", key_name="keys", key_version=eb.V2)
    scoped = eb.account("acct2", key_vault_uri=OTHER_VAULT_URI, current=None,
                        scopes=(eb.scope(account="acct2", key_uri=f"{eb.VAULT_ORIGIN}/keys/keys/{eb.V2}"),))
    listing = listed(two_vault_estate())
    chosen = select(DriftFocus.of([VAULT_CHANGED]), (keys_key,), listing)
    assert chosen.accounts == {eb.account_id("acct1").lower()}
    assert scope_vaults((scoped,), listing) == {eb.VAULT_ID.lower()}
    coverage = Coverage(rules=frozenset({"CMK-013"}), resources=frozenset(),
                        complete_origins=frozenset({eb.VAULT_ORIGIN}), listed_origins=frozenset({eb.VAULT_ORIGIN}),
                        unlisted_complete=False)
    assert coverage.covers("CMK-013", f"{eb.VAULT_ORIGIN}/keys/keys/{eb.V2}")


def test_accounts_without_a_vault_key_neither_stop_nor_join_the_selection():
    """Microsoft-managed keys, or a vault key with no key name, name no vault: the accounts after them
    are still looked at."""
    microsoft = eb.account("acct0", key_source="Microsoft.Storage")
    nameless = eb.account("acct9", key_name=None)
    consumer = eb.account("acct1")
    listing = listed(two_vault_estate())
    chosen = select(DriftFocus.of([VAULT_CHANGED]), (microsoft, nameless, consumer), listing)
    assert chosen.accounts == {eb.account_id("acct1").lower()}


def test_an_account_event_for_an_account_no_longer_listed_is_gone():
    estate = two_vault_estate()
    vanished = eb.account_id("acct7").lower()
    focus = DriftFocus.of([DriftTarget(TargetKind.ACCOUNT, vanished),
                           DriftTarget(TargetKind.ACCOUNT, eb.account_id("acct2").lower())])
    chosen = select(focus, estate.storage_accounts, listed(estate))
    assert chosen.gone == {vanished}
    assert chosen.accounts == {eb.account_id("acct2").lower()}
    assert chosen.vaults == {OTHER_VAULT_ID.lower()}


def test_scope_vaults_are_the_listed_vaults_of_key_vault_scopes_only():
    listing = listed(two_vault_estate())
    accounts = (
        eb.account("acct0", scopes=None),
        eb.account("acct1", scopes=(
            eb.scope("managed", source="Microsoft.Storage", key_uri=f"{OTHER_VAULT_URI}keys/k"),
            eb.scope("no-key", key_uri=None),
            eb.scope("elsewhere", key_uri="https://unlisted.vault.azure.net/keys/k"),
        )),
        eb.account("acct2", scopes=(eb.scope("vaulted", account="acct2"),)),
    )
    assert scope_vaults(accounts, listing) == {eb.VAULT_ID.lower()}
    assert scope_vaults(accounts[:2], listing) == frozenset()


UNLISTED_KEY = "https://gone-cmk.vault.azure.net/keys/k"
OTHER_KEY = f"{OTHER_VAULT_URI}keys/k"


def test_coverage_decides_read_resources_and_the_keys_whose_consumers_were_all_read():
    estate = two_vault_estate()
    remaining = [vault for vault in listed(estate) if vault.id != eb.VAULT_ID]
    partial = replace(estate, storage_accounts=estate.storage_accounts[:1], vaults=())
    selection = Selection(vaults=frozenset(), accounts=frozenset({eb.account_id("acct1").lower()}),
                          complete_origins=frozenset(), unlisted_complete=True,
                          gone=frozenset({eb.VAULT_ID.lower()}))

    coverage = coverage_of(partial, selection, remaining)

    assert coverage.listed_origins == {f"https://{OTHER_VAULT_NAME}.vault.azure.net"}
    assert coverage.covers("cmk-001", eb.account_id("acct1"))  # a read account, whatever the rule's case
    assert coverage.covers("CMK-004", eb.VAULT_ID + "/keys/x")  # a gone vault and what is below it
    assert coverage.covers("CMK-013", UNLISTED_KEY)  # every consumer of a vanished vault was read
    assert not coverage.covers("CMK-013", OTHER_KEY)  # a listed vault's consumers were not all read
    assert not coverage.covers("CMK-001", eb.account_id("acct2"))
    assert not coverage.covers("CMK-020", eb.account_id("acct1"))  # sweep-only
    assert not coverage.covers(None, eb.account_id("acct1"))


@pytest.mark.parametrize(
    ("key", "complete", "unlisted_complete", "covered"),
    [
        (eb.KEY_URI, {eb.VAULT_ORIGIN}, False, True),
        (OTHER_KEY, {eb.VAULT_ORIGIN}, False, False),
        (UNLISTED_KEY, {eb.VAULT_ORIGIN}, False, False),
        (UNLISTED_KEY, set(), True, True),
        (OTHER_KEY, set(), True, False),
        ("https://contoso-cmk.vault.azure.net:port/keys/k", {eb.VAULT_ORIGIN}, True, False),
    ],
)
def test_a_key_is_covered_only_when_every_consumer_of_its_vault_was_read(
    key: str, complete: set[str], unlisted_complete: bool, covered: bool
):
    listed_origins = frozenset({eb.VAULT_ORIGIN, f"https://{OTHER_VAULT_NAME}.vault.azure.net"})
    coverage = Coverage(rules=frozenset({"CMK-013"}), resources=frozenset(), complete_origins=frozenset(complete),
                        listed_origins=listed_origins, unlisted_complete=unlisted_complete)
    assert coverage.covers("CMK-013", key) is covered


# --- the use case -----------------------------------------------------------------------------------------


def drift_deps(estate, *, desk: bool = False):
    settings = load_settings({"CMK_VAULTS": f"{eb.VAULT_ORIGIN},https://{OTHER_VAULT_NAME}.vault.azure.net"})
    clock = FakeClock(eb.NOW)
    reader = FakeEstateReader(estate)
    ledger = FakeAlertLedger()
    channel = FakeChannel()
    overrides = {}
    if desk:
        overrides["notifier"] = AlertDesk(ledger, {ChannelKind.WEBHOOK: (ChannelRoute(ChannelKind.WEBHOOK), channel)},
                                          clock, realert_after=timedelta(hours=24))
    deps = fake_dependencies(settings, clock=clock, estate=reader, **overrides)
    return deps, reader, channel


def opened(channel: FakeChannel) -> list[tuple[str, str]]:
    return [(notice.alert.details["rule"], notice.alert.resource) for notice in channel.received  # type: ignore[misc]
            if notice.transition is Transition.OPENED]


def resolved(channel: FakeChannel) -> list[tuple[str, str]]:
    return [(notice.alert.details["rule"], notice.alert.resource) for notice in channel.received  # type: ignore[misc]
            if notice.transition is Transition.RESOLVED]


def test_a_firewall_turned_on_opens_its_alert_and_turning_it_off_resolves_it():
    deps, reader, channel = drift_deps(two_vault_estate(network_acls=FIREWALL_ON), desk=True)

    report = service.handle_resource_events([event(VAULT_CHANGED)], deps)

    assert [(item.rule, item.resource) for item in report.findings] == [("CMK-007", eb.VAULT_ID)]
    assert opened(channel) == [("CMK-007", eb.VAULT_ID)]
    reader.estate = two_vault_estate()
    service.handle_resource_events([event(VAULT_CHANGED, "e2")], deps)
    assert resolved(channel) == [("CMK-007", eb.VAULT_ID)]


def test_a_partial_re_evaluation_never_resolves_alerts_of_resources_it_did_not_evaluate():
    broken_second = replace(two_vault_estate(), vaults=(
        eb.vault(), eb.vault(name=OTHER_VAULT_NAME, vault_id=OTHER_VAULT_ID, vault_uri=OTHER_VAULT_URI,
                             network_acls=FIREWALL_ON, enable_purge_protection=False)))
    deps, reader, channel = drift_deps(broken_second, desk=True)
    service.run_compliance_sweep(deps)  # the sweep opens the second vault's alerts
    assert set(opened(channel)) >= {("CMK-007", OTHER_VAULT_ID), ("CMK-004", OTHER_VAULT_ID)}

    service.handle_resource_events([event(VAULT_CHANGED)], deps)  # the first vault changed: nothing wrong

    assert resolved(channel) == []
    assert reader.focused == [DriftFocus(vaults=frozenset({eb.VAULT_ID.lower()}))]


def test_a_deleted_vault_is_a_critical_cmk_013_for_the_keys_accounts_use():
    estate = two_vault_estate()
    gone = replace(estate, vaults=tuple(vault for vault in estate.vaults if vault.id != eb.VAULT_ID))
    deps, _, channel = drift_deps(gone, desk=True)

    report = service.handle_resource_events([event(VAULT_CHANGED, kind=ResourceEventKind.DELETE)], deps)

    deletion = [item for item in report.findings if item.rule == "CMK-013"]
    assert [(item.resource, item.severity) for item in deletion] == [(eb.KEY_URI, Severity.CRITICAL)]
    assert ("CMK-013", eb.KEY_URI) in opened(channel)


def test_redelivered_and_out_of_order_events_converge_on_azure_s_current_state():
    deps, reader, channel = drift_deps(two_vault_estate(network_acls=FIREWALL_ON), desk=True)
    later, earlier = event(VAULT_CHANGED, "later"), event(VAULT_CHANGED, "earlier")

    service.handle_resource_events([later], deps)
    duplicate = service.handle_resource_events([later], deps)
    service.handle_resource_events([earlier], deps)  # older news: Azure's state still decides

    assert duplicate.events == () and duplicate.duplicates == ("later",)
    assert opened(channel) == [("CMK-007", eb.VAULT_ID)]  # opened once, whatever was redelivered
    assert len(reader.focused) == 2


def test_a_failed_read_releases_the_claims_so_event_grid_retries():
    deps, reader, _ = drift_deps(two_vault_estate())
    reader.failure = TransientError("ARM throttled")
    with pytest.raises(TransientError):
        service.handle_resource_events([event(VAULT_CHANGED)], deps)
    assert isinstance(deps.ledger, FakeLedger) and deps.ledger.claims == {}
    reader.failure = None
    assert service.handle_resource_events([event(VAULT_CHANGED)], deps).events == ("e1",)


CONTROLLER_APP = "33333333-3333-3333-3333-33333333aaaa"


def test_the_controllers_own_writes_are_neither_claimed_nor_re_read_but_anyone_elses_are():
    """A rotation's adoption writes every account it moves: re-reading each would spend ARM's read budget,
    and claiming each (nothing is done for them) a ledger write per account written."""
    estate = two_vault_estate(network_acls=FIREWALL_ON)
    settings = load_settings({"CMK_VAULTS": f"{eb.VAULT_ORIGIN},https://{OTHER_VAULT_NAME}.vault.azure.net",
                              "AZURE_CLIENT_ID": CONTROLLER_APP.upper()})
    reader = FakeEstateReader(estate)
    ledger = FakeLedger()
    deps = fake_dependencies(settings, clock=FakeClock(eb.NOW), estate=reader, ledger=ledger)
    own = replace(event(VAULT_CHANGED, "own"), caller_app_id=CONTROLLER_APP)

    report = service.handle_resource_events([own], deps)

    assert report.own_writes == ("own",) and report.events == () and report.duplicates == ()
    assert report.focus is None and report.findings == ()
    assert reader.focused == []  # nothing re-read
    assert ledger.claims == {}  # nothing claimed
    someone = replace(event(VAULT_CHANGED, "someone"), caller_app_id="44444444-4444-4444-4444-444444444444")
    report = service.handle_resource_events([own, someone], deps)
    assert report.events == ("someone",) and report.own_writes == ("own",) and report.duplicates == ()
    assert list(ledger.claims) == ["someone"]
    assert [(item.rule, item.resource) for item in report.findings] == [("CMK-007", eb.VAULT_ID)]
    assert service.handle_resource_events([own, someone], deps).duplicates == ("someone",)


def test_without_a_controller_client_id_every_event_is_re_read():
    deps, reader, _ = drift_deps(two_vault_estate(network_acls=FIREWALL_ON))
    own_looking = replace(event(VAULT_CHANGED), caller_app_id=CONTROLLER_APP)
    report = service.handle_resource_events([own_looking], deps)
    assert len(reader.focused) == 1
    assert [(item.rule, item.resource) for item in report.findings] == [("CMK-007", eb.VAULT_ID)]


def test_account_events_older_than_a_completed_re_read_of_their_account_are_not_read_again():
    """A burst (an estate being built: one event per account written) made every event re-read its
    vault and all its consumers, hundreds of times over; an event is a trigger, so one re-evaluation
    that read Azure after it covers it."""
    deps, reader, _ = drift_deps(two_vault_estate())
    first, second = (DriftTarget(TargetKind.ACCOUNT, eb.account_id(name).lower()) for name in ("acct1", "acct2"))
    assert isinstance(deps.clock, FakeClock)
    deps.clock.advance(timedelta(minutes=1))  # the burst's events happened a minute ago
    service.handle_resource_events([event(first, "a1")], deps)  # reads acct1, its vault and its consumers
    assert len(reader.focused) == 1

    covered = service.handle_resource_events([event(first, "a1-again")], deps)
    assert covered.events == ("a1-again",) and len(reader.focused) == 1  # acct1 was read after that event

    service.handle_resource_events([event(second, "a2")], deps)  # acct2 was not read: it is
    later = replace(event(first, "a1-later"), event_time=deps.clock.now())
    service.handle_resource_events([later], deps)  # newer than the read: read again
    assert len(reader.focused) == 3


def read_of(*resources: str) -> Coverage:
    return Coverage(rules=frozenset(), resources=frozenset(resources), complete_origins=frozenset(),
                    listed_origins=frozenset(), unlisted_complete=False)


ACCOUNT_ONE = DriftTarget(TargetKind.ACCOUNT, eb.account_id("acct1"))


def test_a_completed_re_read_covers_only_account_events_strictly_older_than_its_start_less_the_margin():
    done = CompletedReReads()
    done.record(eb.NOW, read_of(eb.account_id("acct1").lower(), eb.VAULT_ID.lower()))
    just_before = eb.NOW - RE_READ_MARGIN - timedelta(microseconds=1)
    assert done.covers(ACCOUNT_ONE, just_before)
    assert not done.covers(ACCOUNT_ONE, eb.NOW - RE_READ_MARGIN)  # within the clocks' disagreement: read again
    assert not done.covers(ACCOUNT_ONE, None)  # no event time: nothing tells it is older
    assert not done.covers(DriftTarget(TargetKind.VAULT, eb.VAULT_ID), just_before)  # only account events
    assert not done.covers(DriftTarget(TargetKind.ACCOUNT, eb.account_id("acct2")), just_before)


def test_only_the_latest_re_reads_are_remembered():
    done = CompletedReReads()
    done.record(eb.NOW, read_of(eb.account_id("acct1").lower()))
    long_before = eb.NOW - timedelta(days=1)
    for _ in range(REMEMBERED_RE_READS - 1):
        done.record(eb.NOW, read_of(eb.account_id("acct2").lower()))
    assert done.covers(ACCOUNT_ONE, long_before)
    done.record(eb.NOW, read_of(eb.account_id("acct2").lower()))
    assert not done.covers(ACCOUNT_ONE, long_before)
