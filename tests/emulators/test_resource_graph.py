"""Resource Graph emulator: real KQL over the resources table, through the unmodified ResourceGraphClient."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError
from azure.mgmt.resourcegraph import ResourceGraphClient
from azure.mgmt.resourcegraph.models import QueryRequest, QueryRequestOptions

from emulators.keyvault.ca import SandboxCA
from emulators.keyvault.credential import SandboxCredential
from emulators.kql import KqlEngine, KqlQueryError, resources_table
from emulators.query_endpoints import RESOURCE_GRAPH_PATH, ResourceGraphEmulator

pytestmark = pytest.mark.integration

SUB_A = "11111111-1111-4111-8111-111111111111"
SUB_B = "22222222-2222-4222-8222-222222222222"
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
ACCOUNTS_A = 1800  # 1,200 of them CMK: more than one page
ACCOUNTS_B = 30
CMK_QUERY = (
    "resources | where type =~ 'microsoft.storage/storageaccounts' "
    "| where properties.encryption.keySource =~ 'Microsoft.Keyvault' "
    "| project id, name, keyUri = strcat(tostring(properties.encryption.keyvaultproperties.keyvaulturi), "
    "'keys/', tostring(properties.encryption.keyvaultproperties.keyname)) "
    "| order by id asc"
)


def storage_account(subscription: str, index: int) -> dict[str, Any]:
    """A row in Resource Graph's shape; every third account uses Microsoft-managed keys."""
    name = f"st{subscription[:4]}{index:05d}"
    cmk = index % 3 != 0
    encryption: dict[str, Any] = {
        "keySource": "Microsoft.Keyvault" if cmk else "Microsoft.Storage",
        "services": {"blob": {"enabled": True, "keyType": "Account"}},
    }
    if cmk:
        encryption["keyvaultproperties"] = {
            "keyvaulturi": f"https://kv{index % 4}.vault.azure.net/",
            "keyname": f"key{index % 7}",
            "keyversion": "",
        }
    return {
        "id": (
            f"/subscriptions/{subscription}/resourceGroups/rg{index % 5}"
            f"/providers/Microsoft.Storage/storageAccounts/{name}"
        ),
        "name": name,
        "type": "microsoft.storage/storageaccounts",
        "tenantId": TENANT,
        "kind": "StorageV2",
        "location": "westeurope",
        "resourceGroup": f"rg{index % 5}",
        "subscriptionId": subscription,
        "managedBy": "",
        "sku": {"name": "Standard_GRS" if index % 2 else "Standard_LRS", "tier": "Standard"},
        "plan": None,
        "properties": {"encryption": encryption, "provisioningState": "Succeeded"},
        "tags": {"env": "prod"} if index % 2 else {},
        "identity": {"type": "SystemAssigned", "principalId": f"00000000-0000-4000-8000-{index:012d}"},
        "zones": None,
        "extendedLocation": None,
    }


def vault(subscription: str, index: int) -> dict[str, Any]:
    return {
        "id": f"/subscriptions/{subscription}/resourceGroups/rg0/providers/Microsoft.KeyVault/vaults/kv{index}",
        "name": f"kv{index}",
        "type": "microsoft.keyvault/vaults",
        "tenantId": TENANT,
        "location": "westeurope",
        "resourceGroup": "rg0",
        "subscriptionId": subscription,
        "properties": {
            "enableSoftDelete": True,
            "enablePurgeProtection": index % 2 == 0,
            "vaultUri": f"https://kv{index}.vault.azure.net/",
        },
        "tags": {},
    }


RESOURCES = (
    [storage_account(SUB_A, i) for i in range(ACCOUNTS_A)]
    + [storage_account(SUB_B, i) for i in range(ACCOUNTS_B)]
    + [vault(SUB_A, i) for i in range(4)]
)


RESOURCE_GROUPS = [
    {
        "id": f"/subscriptions/{subscription}/resourceGroups/rg{index}",
        "name": f"rg{index}",
        "type": "microsoft.resources/subscriptions/resourcegroups",
        "tenantId": TENANT,
        "location": "westeurope",
        "resourceGroup": f"rg{index}",
        "subscriptionId": subscription,
        "properties": {"provisioningState": "Succeeded"},
        "tags": {"owner": f"team{index}"},
    }
    for subscription in (SUB_A, SUB_B)
    for index in range(5)
]


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> SandboxCA:
    return SandboxCA(tmp_path_factory.mktemp("graph-ca"))


@pytest.fixture(scope="module")
def graph(ca: SandboxCA) -> Iterator[ResourceGraphEmulator]:
    with ResourceGraphEmulator(ca, lambda: RESOURCES, resource_containers=lambda: RESOURCE_GROUPS) as running:
        yield running


@pytest.fixture(scope="module")
def client(graph: ResourceGraphEmulator, ca: SandboxCA) -> Iterator[ResourceGraphClient]:
    with ResourceGraphClient(
        SandboxCredential(),
        base_url=graph.endpoint,
        connection_verify=str(ca.ca_path),
        credential_scopes=["https://management.azure.com/.default"],
    ) as rg_client:
        yield rg_client


def run(client: ResourceGraphClient, query: str, subscriptions: list[str] | None = None, **options: Any) -> Any:
    return client.resources(
        QueryRequest(
            subscriptions=subscriptions if subscriptions is not None else [SUB_A],
            query=query,
            options=QueryRequestOptions(**{"result_format": "objectArray", **options}),
        )
    )


def all_pages(client: ResourceGraphClient, query: str, subscriptions: list[str]) -> tuple[list[dict[str, Any]], int]:
    rows: list[dict[str, Any]] = []
    token = None
    pages = 0
    while True:
        page = run(client, query, subscriptions, skip_token=token)
        pages += 1
        rows.extend(page.data)
        token = page.skip_token
        if token is None:
            return rows, pages


def expected_cmk(subscription: str, count: int) -> list[dict[str, Any]]:
    accounts = [storage_account(subscription, i) for i in range(count)]
    return sorted(
        (
            {
                "id": a["id"],
                "name": a["name"],
                "keyUri": a["properties"]["encryption"]["keyvaultproperties"]["keyvaulturi"]
                + "keys/"
                + a["properties"]["encryption"]["keyvaultproperties"]["keyname"],
            }
            for a in accounts
            if a["properties"]["encryption"]["keySource"] == "Microsoft.Keyvault"
        ),
        key=lambda row: row["id"],
    )


def test_cmk_query_projects_key_uri_from_dynamic_properties(client: ResourceGraphClient) -> None:
    expected = expected_cmk(SUB_B, ACCOUNTS_B)

    page = run(client, CMK_QUERY, [SUB_B])

    assert page.total_records == len(expected) == page.count
    assert page.result_truncated == "false"
    assert page.skip_token is None
    assert page.data == expected
    assert page.facets == []


def test_service_query_returns_the_whole_result_unpaged(graph: ResourceGraphEmulator) -> None:
    result = graph.service.query(CMK_QUERY, [SUB_A])

    assert [column.name for column in result.columns] == ["id", "name", "keyUri"]
    assert [dict(zip(["id", "name", "keyUri"], row, strict=True)) for row in result.rows] == expected_cmk(
        SUB_A, ACCOUNTS_A
    )


def test_paging_with_skip_tokens_returns_every_row_once(client: ResourceGraphClient) -> None:
    expected = expected_cmk(SUB_A, ACCOUNTS_A)
    assert len(expected) > 1000

    first = run(client, CMK_QUERY, [SUB_A])
    assert (first.count, first.total_records, first.result_truncated) == (1000, len(expected), "false")
    assert first.skip_token

    rows, pages = all_pages(client, CMK_QUERY, [SUB_A])
    assert pages == 2
    assert rows == expected


def test_skip_starts_the_page_later(client: ResourceGraphClient) -> None:
    expected = expected_cmk(SUB_A, ACCOUNTS_A)

    page = run(client, CMK_QUERY, [SUB_A], skip=len(expected) - 10)

    assert page.data == expected[-10:]
    assert page.total_records == len(expected)
    assert page.skip_token is None


def test_top_sets_the_page_size(client: ResourceGraphClient) -> None:
    query = "resources | where type =~ 'microsoft.keyvault/vaults' | project id, name | order by name asc"

    first = run(client, query, top=3)
    second = run(client, query, top=3, skip_token=first.skip_token)

    assert [r["name"] for r in first.data] == ["kv0", "kv1", "kv2"]
    assert first.total_records == 4
    assert [r["name"] for r in second.data] == ["kv3"]
    assert second.skip_token is None


def test_take_disables_paging_and_reports_truncation(client: ResourceGraphClient) -> None:
    page = run(client, "resources | project id | take 5", top=2)

    assert page.count == 2
    assert page.total_records == 5
    assert page.result_truncated == "true"
    assert page.skip_token is None


def test_rows_are_scoped_to_the_requested_subscriptions(client: ResourceGraphClient) -> None:
    query = "resources | summarize n = count() by subscriptionId | order by subscriptionId asc"

    only_b = run(client, query, [SUB_B.upper()])
    both = run(client, query, [SUB_A, SUB_B])

    assert only_b.data == [{"subscriptionId": SUB_B, "n": ACCOUNTS_B}]
    assert both.data == [{"subscriptionId": SUB_A, "n": ACCOUNTS_A + 4}, {"subscriptionId": SUB_B, "n": ACCOUNTS_B}]


def test_table_format_carries_resource_graph_column_types(client: ResourceGraphClient) -> None:
    query = (
        "resources | where type =~ 'microsoft.keyvault/vaults' "
        "| project name, purge = tobool(properties.enablePurgeProtection), properties, n = 1 | order by name asc"
    )

    page = run(client, query, result_format="table")

    assert page.data["columns"] == [
        {"name": "name", "type": "string"},
        {"name": "purge", "type": "boolean"},
        {"name": "properties", "type": "object"},
        {"name": "n", "type": "integer"},
    ]
    assert page.data["rows"][0][:2] == ["kv0", True]
    assert page.data["rows"][0][2]["vaultUri"] == "https://kv0.vault.azure.net/"


def test_resourcecontainers_joins_resource_group_tags(client: ResourceGraphClient) -> None:
    query = (
        "resources | where type =~ 'microsoft.storage/storageaccounts'"
        " | join kind=leftouter (resourcecontainers"
        " | where type == 'microsoft.resources/subscriptions/resourcegroups'"
        " | project resourceGroup, owner = tostring(tags.owner)) on resourceGroup"
        " | summarize n = count() by owner | order by owner asc"
    )

    page = run(client, query, [SUB_B])

    assert page.data == [{"owner": f"team{i}", "n": ACCOUNTS_B // 5} for i in range(5)]


def test_a_query_without_a_table_runs_against_resources(client: ResourceGraphClient) -> None:
    page = run(client, "where type =~ 'Microsoft.KeyVault/vaults' | project name | order by name asc", top=1)

    assert page.data == [{"name": "kv0"}]
    assert page.total_records == 4


def test_syntax_error_is_reported_as_resource_graph_does(client: ResourceGraphClient) -> None:
    with pytest.raises(HttpResponseError) as caught:
        run(client, "resources | where type =~ ")

    err = caught.value
    assert err.status_code == 400
    assert err.error is not None
    assert err.error.code == "BadRequest"
    assert "correlationId" in err.error.message
    assert [d.code for d in err.error.details] == ["InvalidQuery", "ParserFailure"]


def test_unsupported_construct_is_an_error_not_wrong_rows(client: ResourceGraphClient) -> None:
    with pytest.raises(HttpResponseError) as caught:
        run(client, "resources | project keys = bag_keys(properties)")

    assert caught.value.status_code == 400
    details = caught.value.error.details
    assert [d.code for d in details] == ["InvalidQuery", "SandboxUnsupportedKql"]
    assert "bag_keys" in details[1].message


def test_unknown_column_is_an_invalid_query(client: ResourceGraphClient) -> None:
    with pytest.raises(HttpResponseError) as caught:
        run(client, "resources | where nosuchcolumn == 1")

    assert caught.value.status_code == 400
    assert caught.value.error.details[0].code == "InvalidQuery"
    assert "nosuchcolumn" in caught.value.error.details[1].message


def test_requests_without_a_bearer_token_are_refused(graph: ResourceGraphEmulator, ca: SandboxCA) -> None:
    request = urllib.request.Request(  # noqa: S310 - https to the local emulator
        f"{graph.endpoint}{RESOURCE_GRAPH_PATH}?api-version=2021-03-01",
        data=json.dumps({"query": "resources | count"}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    context = ssl.create_default_context(cafile=str(Path(ca.ca_path)))

    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, context=context, timeout=10)  # noqa: S310

    assert caught.value.code == 401
    assert json.loads(caught.value.read())["error"]["code"] == "AuthenticationFailed"


def test_engine_reloads_when_the_snapshot_changes() -> None:
    rows = [storage_account(SUB_A, 1)]
    engine = KqlEngine([resources_table(lambda: list(rows))])
    try:
        assert engine.query("resources | count").rows == [[1]]
        rows.append(storage_account(SUB_A, 2))
        assert engine.query("resources | count").rows == [[2]]
        with pytest.raises(KqlQueryError) as caught:
            engine.query("resources | where")
        assert (caught.value.kind, caught.value.line) == ("syntax", 1)
    finally:
        engine.close()
