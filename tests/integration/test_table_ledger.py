"""TableEventLedger against Azurite through the real azure-data-tables client."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from azure.data.tables import TableClient

from controller.adapters.table_ledger import TableEventLedger
from controller.errors import TransientError

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
TTL = timedelta(hours=48)


@pytest.fixture
def ledger(azurite):
    table = TableClient.from_connection_string(azurite.connection_string, table_name=f"l{uuid.uuid4().hex[:12]}")
    yield TableEventLedger(table)
    table.delete_table()


def test_first_claim_wins_and_redelivery_is_refused(ledger):
    assert ledger.claim_event("evt/with?odd#chars", now=NOW, ttl=TTL) is True
    assert ledger.claim_event("evt/with?odd#chars", now=NOW + timedelta(hours=1), ttl=TTL) is False
    assert ledger.claim_event("another", now=NOW, ttl=TTL) is True


def test_an_expired_claim_can_be_claimed_again(ledger):
    assert ledger.claim_event("e1", now=NOW, ttl=TTL) is True
    assert ledger.claim_event("e1", now=NOW + TTL + timedelta(seconds=1), ttl=TTL) is True
    assert ledger.claim_event("e1", now=NOW + TTL + timedelta(seconds=2), ttl=TTL) is False


def test_a_released_claim_is_processed_on_redelivery(ledger):
    assert ledger.claim_event("e1", now=NOW, ttl=TTL) is True
    ledger.release_event("e1")
    ledger.release_event("never-claimed")
    assert ledger.claim_event("e1", now=NOW, ttl=TTL) is True


def test_concurrent_claims_of_one_id_have_exactly_one_winner(ledger):
    ledger.claim_event("warm-up", now=NOW, ttl=TTL)  # the table exists before the race
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda _: ledger.claim_event("contended", now=NOW, ttl=TTL), range(16)))
    assert results.count(True) == 1


def test_concurrent_takeover_of_an_expired_claim_has_exactly_one_winner(ledger):
    ledger.claim_event("stale", now=NOW, ttl=TTL)
    later = NOW + TTL * 2
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda _: ledger.claim_event("stale", now=later, ttl=TTL), range(16)))
    assert results.count(True) == 1


def test_purge_deletes_only_expired_claims(ledger):
    ledger.claim_event("old", now=NOW - TTL * 2, ttl=TTL)
    ledger.claim_event("fresh", now=NOW, ttl=TTL)
    assert ledger.purge_expired(now=NOW) == 1
    assert ledger.claim_event("old", now=NOW, ttl=TTL) is True
    assert ledger.claim_event("fresh", now=NOW, ttl=TTL) is False


def test_an_unreachable_table_service_is_a_transient_error():
    table = TableClient.from_connection_string(
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
        "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
        "TableEndpoint=http://127.0.0.1:9/devstoreaccount1;",
        table_name="unreachable",
        retry_total=0,
    )
    with pytest.raises(TransientError):
        TableEventLedger(table).claim_event("e1", now=NOW, ttl=TTL)
