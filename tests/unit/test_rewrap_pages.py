"""Scale-out page items: splitting a listing page into queue-sized items, and validating them."""

from __future__ import annotations

import json
from collections.abc import Mapping

import pytest

from controller.errors import InvalidInput, NotFound
from controller.ports import BlobItem, BlobPage
from controller.rewrap.pages import (
    MAX_PAGE_ITEM_BYTES,
    PAGE_WORK_KIND,
    ListedBlob,
    PageState,
    PageStore,
    RewrapPageItem,
    failed_page_result,
    job_id_of,
    page_items,
    parse_page_item,
)
from controller.rewrap.work import RewrapMode, RewrapWorkItem, parse_work_item
from controller.vault_policy import VaultPolicy

pytestmark = pytest.mark.unit

ORIGIN = "https://kv-pages.vault.azure.net"
KEY_ID = f"{ORIGIN}/keys/blob-kek/{'a' * 32}"
POLICY = VaultPolicy.of([ORIGIN])
JOB = RewrapWorkItem(account="stdocs", container="invoices", prefix=None, key_id=KEY_ID, scale_out=True)


def test_a_listing_page_becomes_items_that_fit_a_queue_message_in_listing_order() -> None:
    blobs = [ListedBlob(name=f"{index:04d}-" + "n" * 900, etag=f'"0x{index:X}"') for index in range(200)]

    items = page_items(JOB, first_number=7, marker="m-1", blobs=blobs)

    assert len(items) > 1
    assert [item.number for item in items] == list(range(7, 7 + len(items)))
    assert [blob for item in items for blob in item.blobs] == blobs
    assert all(item.marker == "m-1" for item in items)
    assert all(len(json.dumps(item.to_message())) <= MAX_PAGE_ITEM_BYTES for item in items)


def test_a_page_item_round_trips_and_carries_names_and_etags_only() -> None:
    [item] = page_items(JOB, first_number=0, marker=None, blobs=[ListedBlob("a.txt", '"0x1"')])
    message = item.to_message()

    assert set(message) == {"kind", "job", "page", "marker", "blobs"}
    assert message["kind"] == PAGE_WORK_KIND
    assert parse_page_item(json.loads(json.dumps(message)), policy=POLICY) == item


def test_a_page_given_up_counts_each_of_its_blobs_failed_by_name_with_why() -> None:
    page = RewrapPageItem(JOB, 3, "m-3", (ListedBlob("a.txt", '"0x1"'), ListedBlob("b.txt", '"0x2"')))

    result = failed_page_result(page, "still failing after 5 attempts: " + "x" * 400)

    assert result.state is PageState.FAILED
    assert result.counts == {"failed": 2}
    assert [(problem.name, problem.reason) for problem in result.problems] == [
        ("a.txt", "page_failed"), ("b.txt", "page_failed")]
    assert all(problem.detail.startswith("still failing after 5 attempts: x") for problem in result.problems)
    assert len(result.failure) == 256 and result.unwrap_calls == result.writes == 0


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"surprise": 1}, "unknown field"),
        ({"job": "x"}, "'job' must be an object"),
        ({"job": {**JOB.to_message(), "scale_out": False}}, "scale-out job"),
        ({"page": -1}, "'page'"),
        ({"page": True}, "'page'"),
        ({"marker": ""}, "'marker'"),
        ({"blobs": []}, "'blobs'"),
        ({"blobs": [["a", '"1"'], ["a", '"2"']]}, "named twice"),
        ({"blobs": [["a"]]}, "[name, etag]"),
        ({"blobs": [["a", ""]]}, "[name, etag]"),
        ({"blobs": [["n" * 1025, '"1"']]}, "[name, etag]"),
    ],
)
def test_bad_page_items_are_refused_with_the_field(change: dict[str, object], error: str) -> None:
    message = {**RewrapPageItem(JOB, 0, None, (ListedBlob("a", '"1"'),)).to_message(), **change}
    with pytest.raises(InvalidInput, match=error.replace("[", r"\[").replace("]", r"\]")):
        parse_page_item(message, policy=POLICY)


def test_scale_out_is_a_work_item_field_and_not_for_dry_runs() -> None:
    assert parse_work_item(JOB.to_message(), policy=POLICY).scale_out is True
    assert "scale_out" not in RewrapWorkItem(account="stdocs", container="c-1", prefix=None, key_id=KEY_ID).to_message()
    with pytest.raises(InvalidInput, match="dry run"):
        parse_work_item({**JOB.to_message(), "dry_run": True}, policy=POLICY)
    with pytest.raises(InvalidInput, match="boolean"):
        parse_work_item({**JOB.to_message(), "scale_out": "yes"}, policy=POLICY)


def test_the_job_id_names_mode_container_prefix_and_target_version() -> None:
    rewrite = RewrapWorkItem(account="stdocs", container="invoices", prefix="2026/", key_id=KEY_ID,
                             mode=RewrapMode.REWRITE, scale_out=True)
    assert job_id_of(JOB) == f"scale|rewrap|stdocs|invoices||{KEY_ID}"
    assert job_id_of(rewrite) == f"scale|rewrite|stdocs|invoices|2026/|{KEY_ID}"


class ListingStore:
    """A store whose listing at a marker shows some blobs; others are read one by one (or gone)."""

    def __init__(self) -> None:
        self.listed = {"a": "1", "b": "2"}
        self.elsewhere = {"c": "3"}
        self.calls: list[str] = []

    def list_blobs(self, container: str, *, prefix: str | None, marker: str | None) -> BlobPage:
        self.calls.append(f"list {marker}")
        items = tuple(BlobItem(name=name, etag=etag, metadata={}) for name, etag in self.listed.items())
        return BlobPage(items=items, next_marker="more")

    def get_properties(self, container: str, name: str) -> BlobItem:
        self.calls.append(f"get {name}")
        if name not in self.elsewhere:
            raise NotFound(name)
        return BlobItem(name=name, etag=self.elsewhere[name], metadata={})

    def set_metadata(self, container: str, name: str, metadata: Mapping[str, str], *, if_match: str) -> str:
        raise AssertionError("not written here")


def test_a_page_store_lists_the_pages_blobs_as_they_are_now() -> None:
    store = ListingStore()
    page = RewrapPageItem(JOB, 3, "m-3", tuple(ListedBlob(name, '"0"') for name in ("a", "c", "gone")))
    page_store = PageStore(store, page)

    listed = page_store.list_blobs("invoices", prefix=None, marker=None)

    assert [(item.name, item.etag) for item in listed.items] == [("a", "1"), ("c", "3")]
    assert listed.next_marker is None  # the page is the whole listing
    assert page_store.vanished == ["gone"]
    assert store.calls == ["list m-3", "get c", "get gone"]
