"""A fake Azure CLI for the azd hook tests: records every call and answers from a JSON state file.

Run as `az` (a shim on PATH execs this file). FAKE_AZ_STATE names the state: {"logged_in": bool, "resources":
[ids], "role_assignments": {subscription: [{"id", "principalId"}]}, "access_policies": {vault id: [object ids]},
"functions": [names], "deployments": [recorded]}; FAKE_AZ_LOG receives one JSON line per call (its argv). The
commands are the few the hooks use, answered as the real CLI would (exit 3 for a missing resource); anything else
fails loudly, so a hook that starts using a new command fails its test until the fake learns it.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def options(argv: list[str], name: str) -> list[str]:
    """The values after `name` up to the next option (az accepts --ids a b c)."""
    start = argv.index(name) + 1
    values = []
    for value in argv[start:]:
        if value.startswith("--"):
            break
        values.append(value)
    return values


def missing(resource: str) -> int:
    print(f"ERROR: (ResourceNotFound) The Resource '{resource}' was not found.", file=sys.stderr)
    return 3


def run(argv: list[str], state: dict[str, Any]) -> int:
    command = " ".join(word for word in argv[:4] if not word.startswith("--"))
    if command.startswith("account show"):
        if not state["logged_in"]:
            print("ERROR: Please run 'az login' to setup account.", file=sys.stderr)
            return 1
        return 0
    if not state["logged_in"]:
        print("ERROR: Please run 'az login' to setup account.", file=sys.stderr)
        return 1
    if command.startswith("resource show"):
        (resource,) = options(argv, "--ids")
        return 0 if resource in state["resources"] else missing(resource)
    if command.startswith("resource delete"):
        for resource in options(argv, "--ids"):
            if resource in state["resources"]:
                state["resources"].remove(resource)
        return 0
    if command.startswith("rest"):
        url = option(argv, "--url")
        topic = url.split("/eventSubscriptions?")[0]
        count = sum(1 for resource in state["resources"] if resource.startswith(f"{topic}/eventSubscriptions/"))
        print(count)
        return 0
    if command.startswith("keyvault show"):
        vault = vault_id(argv)
        if vault not in state["access_policies"]:
            return missing(vault)
        principal = re.search(r"objectId=='([^']+)'", option(argv, "--query"))
        assert principal is not None
        print(state["access_policies"][vault].count(principal.group(1)))
        return 0
    if command.startswith("keyvault delete-policy"):
        policies = state["access_policies"][vault_id(argv)]
        policies[:] = [principal for principal in policies if principal != option(argv, "--object-id")]
        return 0
    if command.startswith("role assignment list"):
        principal = re.search(r"principalId=='([^']+)'", option(argv, "--query"))
        assert principal is not None and "--all" in argv
        for assignment in state["role_assignments"].get(option(argv, "--subscription"), []):
            if assignment["principalId"] == principal.group(1):
                print(assignment["id"])
        return 0
    if command.startswith("role assignment delete"):
        doomed = set(options(argv, "--ids"))
        for subscription, assignments in state["role_assignments"].items():
            state["role_assignments"][subscription] = [a for a in assignments if a["id"] not in doomed]
        return 0
    if command.startswith("functionapp function show"):
        return 0 if option(argv, "--function-name") in state["functions"] else missing(option(argv, "--function-name"))
    if command.startswith("deployment sub create"):
        parameters = json.loads(Path(option(argv, "--parameters").lstrip("@")).read_text(encoding="utf-8"))
        state["deployments"].append({"name": option(argv, "--name"), "template": option(argv, "--template-file"),
                                     "parameters": parameters["parameters"]})
        return 0
    print(f"fake az: unsupported command: {' '.join(argv)}", file=sys.stderr)
    return 99


def vault_id(argv: list[str]) -> str:
    return (f"/subscriptions/{option(argv, '--subscription')}/resourceGroups/{option(argv, '--resource-group')}"
            f"/providers/Microsoft.KeyVault/vaults/{option(argv, '--name')}")


def main() -> int:
    state_path = Path(os.environ["FAKE_AZ_STATE"])
    with Path(os.environ["FAKE_AZ_LOG"]).open("a", encoding="utf-8") as log:
        log.write(json.dumps(sys.argv[1:]) + "\n")
    state = json.loads(state_path.read_text(encoding="utf-8"))
    status = run(sys.argv[1:], state)
    state_path.write_text(json.dumps(state), encoding="utf-8")
    return status


if __name__ == "__main__":
    sys.exit(main())
