"""Resource Graph queries (azure-mgmt-resourcegraph): every row of a KQL query, page by page.

One request per page of up to 1,000 rows (Resource Graph's largest), continued with skip tokens; at most
1,000 subscriptions per request (its limit), so longer subscription lists are queried in chunks. No
subscriptions: every subscription the identity can read. Errors are translated (controller.errors): a
refusal (403, 400/404 where the cloud has no Resource Graph) is a PermanentError the callers fall back
on, throttling stays a TransientError.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from azure.mgmt.resourcegraph import ResourceGraphClient
from azure.mgmt.resourcegraph.models import QueryRequest, QueryRequestOptions

from controller.adapters.azure_errors import translated
from controller.errors import PermanentError

#: Resource Graph's largest page, and its limit of subscriptions per request.
PAGE_ROWS = 1000
SUBSCRIPTIONS_PER_QUERY = 1000


def query_rows(
    client: ResourceGraphClient,
    kql: str,
    subscriptions: Sequence[str] = (),
    *,
    page_rows: int = PAGE_ROWS,
    on_page: Callable[[], None] | None = None,
) -> Iterator[Mapping[str, Any]]:
    """Rows of ``kql`` over ``subscriptions`` (empty: all the identity can read), every page;
    ``on_page`` is called before each request (cost counters)."""
    chunks: list[list[str] | None] = (
        [list(subscriptions[start : start + SUBSCRIPTIONS_PER_QUERY])
         for start in range(0, len(subscriptions), SUBSCRIPTIONS_PER_QUERY)]
        if subscriptions
        else [None]
    )
    for chunk in chunks:
        skip_token: str | None = None
        while True:
            request = QueryRequest(
                query=kql,
                subscriptions=chunk,
                options=QueryRequestOptions(result_format="objectArray", top=page_rows, skip_token=skip_token),
            )
            with translated("Resource Graph query"):
                if on_page is not None:
                    on_page()
                response = client.resources(request)
            if str(response.result_truncated).lower() == "true":
                raise PermanentError("Resource Graph truncated the result and gave no skip token")
            data: Any = response.data  # objectArray: a list of row objects
            yield from (row for row in data or () if isinstance(row, Mapping))
            skip_token = response.skip_token
            if not skip_token:
                break
