"""The sandbox scenarios (emulators/scenarios/*.json) as documents: what `seed` will build from them."""

from __future__ import annotations

import re

import pytest

from emulators.sandbox import SandboxError
from emulators.seed import SYSTEM_ASSIGNED, account_specs, load_scenario, scenario_names

pytestmark = pytest.mark.unit

_ACCOUNT_NAME = re.compile(r"[a-z0-9]{3,24}")


def test_a_counted_account_stands_for_that_many_named_by_their_number():
    scenario = {"storageAccounts": [{"name": "st{n:03d}", "count": 3, "identity": "id"}, {"name": "stsingle"}]}
    assert [spec["name"] for spec in account_specs(scenario)] == ["st001", "st002", "st003", "stsingle"]
    assert all("count" not in spec for spec in account_specs(scenario))


def test_a_count_without_a_number_in_the_name_is_refused():
    with pytest.raises(SandboxError, match=re.escape("no {n} in its name")):
        account_specs({"storageAccounts": [{"name": "stsame", "count": 2}]})


@pytest.mark.parametrize("name", scenario_names())
def test_every_scenario_names_valid_distinct_accounts_with_a_known_identity(name):
    scenario = load_scenario(name)
    specs = account_specs(scenario)
    names = [spec["name"] for spec in specs]
    assert len(names) == len(set(names))
    assert all(_ACCOUNT_NAME.fullmatch(account) for account in names), names
    identities = {identity["name"] for identity in scenario.get("identities") or []}
    for spec in specs:
        assert spec["identity"] in identities or (spec["identity"] == SYSTEM_ASSIGNED and spec["grantKeys"])


def test_the_stories_are_the_seed_s():
    saas = account_specs(load_scenario("saas"))
    assert len(saas) == 100 and len({spec["identity"] for spec in saas}) == 4
    assert len({spec["cmk"]["key"] for spec in saas}) == 4
    hospital = load_scenario("hospital")
    assert hospital["keys"][0]["hsm"] and hospital["vaults"][0]["sku"] == "premium"
    assert {"action": "Rotate", "timeAfterCreate": "P90D"} in hospital["keys"][0]["rotationPolicy"]["lifetimeActions"]
    assert all(spec["identity"] == SYSTEM_ASSIGNED for spec in account_specs(hospital))
