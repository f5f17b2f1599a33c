"""controller.rotation: what each decision tells the operator, and the conditions recorded with it.

A decision's message is the evidence an operator acts on (the alert, the log line, `cmkctl status`):
it names the consumer, the versions involved and what happens next.
"""

from __future__ import annotations

import pytest

from controller.rotation import LedgerView, Plan, plan
from tests.unit.test_rotation import CASES, KEY, V1, V2, V3, V4, Case

pytestmark = pytest.mark.unit

KEY_URI = KEY.uri

MESSAGES = {
    'versionless adopted': (
        f'account acct1: versionless, currentVersionedKeyIdentifier is version {V3}'
    ),
    'versionless inside the window: recheck within the hour': (
        f'account acct1: versionless, currentVersionedKeyIdentifier is {V2}, target {V3} available '
        'since 2026-11-30T11:00:00+00:00; inside the adoption window until '
        '2026-12-01T11:00:00+00:00'
    ),
    'versionless inside the window: recheck at the deadline when sooner': (
        f'account acct1: versionless, currentVersionedKeyIdentifier is {V2}, target {V3} available '
        'since 2026-11-30T11:00:00+00:00; inside the adoption window until '
        '2026-12-01T11:00:00+00:00'
    ),
    'versionless after the window: force (pin first, intent first)': (
        f'account acct1: currentVersionedKeyIdentifier is {V2}, target {V3}; forcing adoption: pin, '
        'verify, restore versionless'
    ),
    'force_versionless_after=0 forces at once': (
        f'account acct1: currentVersionedKeyIdentifier is {V2}, target {V3}; forcing adoption: pin, '
        'verify, restore versionless'
    ),
    'versionless reporting no current version is forced too': (
        f'account acct1: currentVersionedKeyIdentifier is not reported, target {V3}; forcing '
        'adoption: pin, verify, restore versionless'
    ),
    'current version of another key counts as not adopted': (
        f'account acct1: versionless, currentVersionedKeyIdentifier is not reported, target {V3} '
        'available since 2026-11-30T11:00:00+00:00; inside the adoption window until '
        '2026-12-01T11:00:00+00:00'
    ),
    'forcing off, inside the window': (
        f'account acct1: versionless, currentVersionedKeyIdentifier is {V2}, target {V3} available '
        'since 2026-11-30T11:00:00+00:00; inside the adoption window until '
        '2026-12-01T11:00:00+00:00'
    ),
    'forcing off, after the window: alert': (
        f'account acct1: versionless, currentVersionedKeyIdentifier is {V2}, target {V3} available '
        'since 2026-11-30T11:00:00+00:00; the adoption window ended at 2026-12-01T11:00:00+00:00 '
        'and forcing is off'
    ),
    'encryption scope forced like an account': (
        f'scope acct1/scope1: currentVersionedKeyIdentifier is {V2}, target {V3}; forcing adoption: '
        'pin, verify, restore versionless'
    ),
    'pinned to the target and adopted': (
        f'account acct1: pinned, currentVersionedKeyIdentifier is version {V3}'
    ),
    'pinned to the target, Azure not caught up: verify': (
        f'account acct1: pinned to {V3} but currentVersionedKeyIdentifier is {V2}; verifying again'
    ),
    'pinned old, policy alert': (
        f'account acct1: pinned to {V2}, target {V3} (created 2026-11-30T11:00:00+00:00); pinned '
        'policy alert (CMK_PINNED_POLICY): update the key version'
    ),
    'pinned old, policy update': (
        f'account acct1: pinned to {V2}, target {V3} (created 2026-11-30T11:00:00+00:00); pinned '
        'policy update (CMK_PINNED_POLICY): updating'
    ),
    'pinned old, policy alert, tag says update': (
        f'account acct1: pinned to {V2}, target {V3} (created 2026-11-30T11:00:00+00:00); pinned '
        'policy update (tag cmk-pinned-policy): updating'
    ),
    'pinned old, policy update, tag says alert': (
        f'account acct1: pinned to {V2}, target {V3} (created 2026-11-30T11:00:00+00:00); pinned '
        'policy alert (tag cmk-pinned-policy): update the key version'
    ),
    'pinned old, unreadable tag never authorises a write': (
        f'account acct1: pinned to {V2}, target {V3} (created 2026-11-30T11:00:00+00:00); pinned '
        "policy alert (tag cmk-pinned-policy='yes please' is not alert or update): update the key "
        'version'
    ),
    'pinned old, stays pinned even past the window': (
        f'account acct1: pinned to {V1}, target {V3} (created 2026-11-30T11:00:00+00:00); pinned '
        'policy alert (CMK_PINNED_POLICY): update the key version'
    ),
    'identity denied: never force': (
        f'account acct1: its encryption identity lacks get/wrapKey/unwrapKey on {KEY_URI}; changing '
        'its key would make its data unreadable'
    ),
    'identity denied: never update a pin': (
        f'account acct1: its encryption identity lacks get/wrapKey/unwrapKey on {KEY_URI}; changing '
        'its key would make its data unreadable'
    ),
    'identity denied outranks adopted': (
        f'account acct1: its encryption identity lacks get/wrapKey/unwrapKey on {KEY_URI}; changing '
        'its key would make its data unreadable'
    ),
    'access unknown: no forced write': (
        f"account acct1: currentVersionedKeyIdentifier is {V2}, target {V3}; the identity's access "
        'to the key could not be evaluated, so nothing is changed'
    ),
    'access unknown: no pin update': (
        f'account acct1: pinned to {V2}, target {V3} (created 2026-11-30T11:00:00+00:00); pinned '
        "policy update (CMK_PINNED_POLICY); the identity's access to the key could not be "
        'evaluated, so nothing is changed'
    ),
    'access unknown: waiting needs no write': (
        f'account acct1: versionless, currentVersionedKeyIdentifier is {V2}, target {V3} available '
        'since 2026-11-30T11:00:00+00:00; inside the adoption window until '
        '2026-12-01T11:00:00+00:00'
    ),
    'stale event for an older version: target stays the newest': (
        f'account acct1: pinned to {V2}, target {V3} (created 2026-11-30T11:00:00+00:00); pinned '
        'policy update (CMK_PINNED_POLICY): updating'
    ),
    'stale event: an adopted consumer stays adopted': (
        f'account acct1: versionless, currentVersionedKeyIdentifier is version {V3}'
    ),
    'newest version disabled (no event): the newest enabled is the target': (
        f'account acct1: versionless, currentVersionedKeyIdentifier is version {V3}'
    ),
    'event for a disabled new version: blocked': (
        f'account acct1: target version {V4} (created 2026-11-30T11:50:00+00:00) is disabled'
    ),
    'new version not yet valid: blocked until its not-before': (
        f'account acct1: target version {V4} is not valid before 2026-11-30T14:00:00+00:00'
    ),
    'new version expired: blocked': (
        f'account acct1: target version {V3} expired at 2026-11-30T11:59:00+00:00'
    ),
    'event version not listed yet: short recheck': (
        f'account acct1: the event names version {V4} of {KEY_URI}, which the vault listing does not '
        'show yet; re-checking'
    ),
    'no enabled version': (
        f'account acct1: {KEY_URI} has no enabled version'
    ),
    'vault unreachable': (
        'account acct1: vault https://contoso.vault.azure.net could not be read: connection '
        'refused; nothing is changed'
    ),
    'consumer on a version the listing lacks': (
        f'account acct1: current version {V4} is not in the listing of {KEY_URI}; nothing is changed'
    ),
    'consumer pinned to a newer (disabled) version is never moved back': (
        f'account acct1: pinned version {V4} (created 2026-11-30T11:50:00+00:00) is newer than the '
        f'target {V3}; a consumer is never moved back'
    ),
    'intent pinned, consumer pinned and verified: restore versionless': (
        f"account acct1: adopted {V3} through the controller's pin (intent of "
        '2026-11-30T11:55:00+00:00); restoring the versionless key URI'
    ),
    'intent pinned, current not yet the target: verify': (
        f'account acct1: pinned to {V3} but currentVersionedKeyIdentifier is {V2}; verifying again'
    ),
    'intent written, pin never happened: pin again (inside the window too)': (
        f'account acct1: currentVersionedKeyIdentifier is {V2}, target {V3}; resuming the recorded '
        'forced adoption: pinning'
    ),
    'restored but record not completed: complete it': (
        f'account acct1: versionless and using {V3}; completing the forced adoption record'
    ),
    'our pin to an older target: pin the newer one with a new intent': (
        f'account acct1: currentVersionedKeyIdentifier is {V2}, target {V3}; forcing adoption: pin, '
        'verify, restore versionless'
    ),
    'user re-pinned during our forced adoption: their pin, intent abandoned': (
        f'account acct1: pinned to {V1}, target {V3} (created 2026-11-30T11:00:00+00:00); pinned '
        'policy alert (CMK_PINNED_POLICY): update the key version'
    ),
    'user pin to the target without an intent is left alone': (
        f'account acct1: pinned, currentVersionedKeyIdentifier is version {V3}'
    ),
    'completed record is not rewritten': (
        f'account acct1: versionless, currentVersionedKeyIdentifier is version {V3}'
    ),
}


def decide(case: Case) -> Plan:
    return plan(case.key, [case.consumer], LedgerView.of(case.intents), target_version=case.event_version,
                now=case.now, settings=case.settings)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_the_decision_message_names_the_consumer_the_versions_and_the_next_step(case: Case) -> None:
    assert decide(case).decisions[0].message == MESSAGES[case.id]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_a_decision_names_its_target_unless_the_key_blocks_every_consumer(case: Case) -> None:
    result = decide(case)
    (decision,) = result.decisions
    if result.target is None:
        assert decision.target_version is None
    else:
        assert decision.target_version == result.target.version
