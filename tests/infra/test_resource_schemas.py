"""Every resource body in infra/ against the official definition of its resource type at its API version.

The definitions (tests/infra/specs/resource_types.json) are extracted from the model classes AutoRest generates from
the Azure REST API specifications for that exact API version (tests/infra/specs/NOTICE.md). A property the API
version does not have, a misspelled one, a read-only one that is set, a missing required one, a literal of the wrong
type or outside its enum fails here, instead of at deployment time. Expressions (parameters, outputs of other
resources) cannot be typed statically: their property names are still checked, and both branches of a condition and
the literal value of a variable are checked like a literal.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.infra.test_bicep import BICEP_FILES, INFRA, body, parse

pytestmark = pytest.mark.unit

SPECS = Path(__file__).with_name("specs")
SCHEMAS: dict[str, Any] = json.loads((SPECS / "resource_types.json").read_text(encoding="utf-8"))
# Bicep's own keys in a resource body, not properties of the REST resource.
BICEP_KEYS = {"name", "parent", "scope", "dependsOn"}
TYPES_OF = {"string": (str,), "boolean": (bool,), "integer": (int,), "number": (int, float), "array": (list,)}


class SchemaCheck:
    """Checks one resource body against the definitions of its resource type; collects every problem."""

    def __init__(self, definitions: Mapping[str, Any], template: Mapping[str, Any]) -> None:
        self.definitions = definitions
        self.template = template
        self.problems: list[str] = []
        self.following: set[str] = set()

    def check(self, value: Any, node: Mapping[str, Any], where: str) -> None:
        if node.get("readonly"):
            self.problems.append(f"{where}: read-only, cannot be set")
            return
        while "$ref" in node:
            node = self.definitions[node["$ref"]]
        if node["type"] == "any":
            return
        if isinstance(value, str) and value in self.template.get("variables", {}):
            if value not in self.following:  # a variable: check its literal value where it is used
                self.following.add(value)
                self.check(self.template["variables"][value]["value"], node, where)
                self.following.discard(value)
            return
        if isinstance(value, dict) and ("operator" in value or "function" in value or "loop_type" in value):
            operator = value.get("operator", {})
            if operator.get("type") == "conditional":
                self.check(operator["operands"]["true_value"], node, where)
                self.check(operator["operands"]["false_value"], node, where)
            elif "loop_type" in value:
                self.check([value["config"]], node, where)
            return  # an expression whose type only the deployment knows
        if isinstance(value, str) and value in self.template.get("parameters", {}):
            return
        if isinstance(value, dict):
            self.check_object(value, node, where)
        elif node["type"] in ("object", "map"):
            self.problems.append(f"{where}: expected an object, got {value!r}")
        elif node["type"] == "array":
            if not isinstance(value, list):
                self.problems.append(f"{where}: expected an array, got {value!r}")
                return
            for index, item in enumerate(value):
                self.check(item, node["items"], f"{where}[{index}]")
        else:
            self.check_scalar(value, node, where)

    def check_scalar(self, value: Any, node: Mapping[str, Any], where: str) -> None:
        expected = TYPES_OF[node["type"]]
        if (isinstance(value, bool) and bool not in expected) or not isinstance(value, expected):
            self.problems.append(f"{where}: expected {node['type']}, got {value!r}")
            return
        interpolated = isinstance(value, str) and "${" in value
        if "enum" in node and not interpolated and value.lower() not in {item.lower() for item in node["enum"]}:
            self.problems.append(f"{where}: {value!r} is not one of {node['enum']}")

    def check_object(self, value: Mapping[str, Any], node: Mapping[str, Any], where: str) -> None:
        if node["type"] == "map":
            for key, item in value.items():
                self.check(item, node["values"], f"{where}.{key}")
            return
        if node["type"] != "object":
            self.problems.append(f"{where}: expected {node['type']}, got an object")
            return
        discriminator = node.get("discriminator")
        if discriminator:
            kind = value.get(discriminator["property"])
            if kind not in discriminator["mapping"]:
                self.problems.append(f"{where}.{discriminator['property']}: {kind!r} is not one of "
                                     f"{sorted(discriminator['mapping'])}")
                return
            node = self.definitions[discriminator["mapping"][kind]]
        properties = node["properties"]
        for key, item in value.items():
            if key in properties:
                self.check(item, properties[key], f"{where}.{key}")
            elif "" not in properties:  # "" marks a model that accepts additional properties
                self.problems.append(f"{where}.{key}: no such property in this API version")
        for key in node.get("required", []):
            if key not in value:
                self.problems.append(f"{where}.{key}: required, missing")


def declared_resources() -> Iterator[tuple[Path, str, dict[str, Any], dict[str, Any]]]:
    for path in BICEP_FILES:
        template = parse(path)
        for symbol, declaration in template.get("resources", {}).items():
            if not declaration["existing"]:
                yield path, symbol, declaration, template


DECLARED = list(declared_resources())


def problems_of(declaration: Mapping[str, Any], template: Mapping[str, Any], where: str) -> list[str]:
    schema = SCHEMAS[f"{declaration['type']}@{declaration['api_version']}"]
    check = SchemaCheck(schema["definitions"], template)
    resource = {key: value for key, value in body(declaration).items() if key not in BICEP_KEYS}
    check.check(resource, {"$ref": schema["root"]}, where)
    return check.problems


def test_every_deployed_resource_type_and_api_version_has_a_vendored_definition():
    missing = {f"{d['type']}@{d['api_version']}" for _, _, d, _ in DECLARED} - set(SCHEMAS)
    assert not missing, f"add these to tests/infra/specs/extract_models.py and regenerate: {sorted(missing)}"
    assert len(DECLARED) >= 30


@pytest.mark.parametrize(("path", "symbol", "declaration", "template"), DECLARED,
                         ids=[f"{path.relative_to(INFRA)}:{symbol}" for path, symbol, _, _ in DECLARED])
def test_resource_body_matches_its_api_versions_definition(path, symbol, declaration, template):
    assert problems_of(declaration, template, symbol) == []


BROKEN = """
param planId string
resource app 'Microsoft.Web/sites@2024-04-01' = {
  name: 'func-broken'
  kind: 'functionapp,linux'
  properties: {
    serverFarmID: planId
    defaultHostName: 'func-broken.azurewebsites.net'
    httpsOnly: 'yes'
    functionAppConfig: {
      scaleAndConcurrency: {
        maximumInstanceCount: 40
        instanceMemoryMB: 2048
      }
      runtime: {
        name: 'cobol'
        version: '3.11'
      }
    }
  }
}
resource events 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2022-06-15' = {
  name: 'x/y'
  properties: {
    destination: {
      endpointType: 'AzureFunctions'
    }
  }
}
"""


def test_the_check_finds_misspelled_read_only_mistyped_missing_and_out_of_enum_properties(tmp_path):
    broken = tmp_path / "broken.bicep"
    broken.write_text(BROKEN, encoding="utf-8")
    template = parse(broken)
    problems = [*problems_of(template["resources"]["app"], template, "app"),
                *problems_of(template["resources"]["events"], template, "events")]
    assert sorted(problems) == sorted([
        "app.properties.serverFarmID: no such property in this API version",
        "app.properties.defaultHostName: read-only, cannot be set",
        "app.properties.httpsOnly: expected boolean, got 'yes'",
        "app.properties.functionAppConfig.runtime.name: 'cobol' is not one of "
        "['custom', 'dotnet-isolated', 'java', 'node', 'powershell', 'python']",
        "app.location: required, missing",
        "events.properties.destination.endpointType: 'AzureFunctions' is not one of ['AzureFunction', 'EventHub', "
        "'HybridConnection', 'ServiceBusQueue', 'ServiceBusTopic', 'StorageQueue', 'WebHook']",
    ])
