"""Regenerates resource_types.json: the request-body schema of every resource type infra/ deploys, at its API version.

The source is the official model classes that AutoRest generates from the Azure REST API specifications
(Azure/azure-rest-api-specs) for each API version, as published in the azure-mgmt-* packages (MIT licence). Each
pinned wheel below is downloaded with pip, unpacked into a temporary directory and imported in a child process, and
the models' own metadata is written out: `_attribute_map` (JSON property names, including flattened
`properties.x` paths, and types), `_validation` (read-only and required), `_subtype_map` (discriminated types) and
the enum classes named in the constructor annotations.

Run from the repository root with the project's virtualenv (azure-core, isodate, azure-common):
    .venv/bin/python tests/infra/specs/extract_models.py
Nothing here runs during the tests: they read the generated JSON only.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

HERE = Path(__file__).parent
OUTPUT = HERE / "resource_types.json"

# resource type@API version -> (pinned wheel, models module, root model of the PUT body)
RESOURCE_TYPES = {
    "Microsoft.Authorization/policyAssignments@2023-04-01":
        ("azure-mgmt-resource==23.3.0", "azure.mgmt.resource.policy.v2023_04_01.models", "PolicyAssignment"),
    "Microsoft.Authorization/roleAssignments@2022-04-01":
        ("azure-mgmt-authorization==4.0.0", "azure.mgmt.authorization.v2022_04_01.models",
         "RoleAssignmentCreateParameters"),
    "Microsoft.Authorization/roleDefinitions@2022-04-01":
        ("azure-mgmt-authorization==4.0.0", "azure.mgmt.authorization.v2022_04_01.models", "RoleDefinition"),
    "Microsoft.EventGrid/systemTopics/eventSubscriptions@2022-06-15":
        ("azure-mgmt-eventgrid==10.2.0", "azure.mgmt.eventgrid.models", "EventSubscription"),
    "Microsoft.EventGrid/systemTopics@2022-06-15":
        ("azure-mgmt-eventgrid==10.2.0", "azure.mgmt.eventgrid.models", "SystemTopic"),
    "Microsoft.EventGrid/topics@2022-06-15":
        ("azure-mgmt-eventgrid==10.2.0", "azure.mgmt.eventgrid.models", "Topic"),
    "Microsoft.Insights/components@2020-02-02":
        ("azure-mgmt-applicationinsights==4.1.0", "azure.mgmt.applicationinsights.v2020_02_02.models",
         "ApplicationInsightsComponent"),
    "Microsoft.Insights/diagnosticSettings@2021-05-01-preview":
        ("azure-mgmt-monitor==6.0.2", "azure.mgmt.monitor.v2021_05_01_preview.models", "DiagnosticSettingsResource"),
    "Microsoft.KeyVault/vaults/accessPolicies@2023-07-01":
        ("azure-mgmt-keyvault==10.3.1", "azure.mgmt.keyvault.v2023_07_01.models", "VaultAccessPolicyParameters"),
    "Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31":
        ("azure-mgmt-msi==7.0.0", "azure.mgmt.msi.v2023_01_31.models", "Identity"),
    "Microsoft.OperationalInsights/workspaces@2021-06-01":
        ("azure-mgmt-loganalytics==12.0.0", "azure.mgmt.loganalytics.models", "Workspace"),
    "Microsoft.Resources/resourceGroups@2022-09-01":
        ("azure-mgmt-resource==23.3.0", "azure.mgmt.resource.resources.v2022_09_01.models", "ResourceGroup"),
    "Microsoft.Storage/storageAccounts@2023-05-01":
        ("azure-mgmt-storage==21.2.1", "azure.mgmt.storage.v2023_05_01.models", "StorageAccountCreateParameters"),
    "Microsoft.Storage/storageAccounts/blobServices@2023-05-01":
        ("azure-mgmt-storage==21.2.1", "azure.mgmt.storage.v2023_05_01.models", "BlobServiceProperties"),
    "Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01":
        ("azure-mgmt-storage==21.2.1", "azure.mgmt.storage.v2023_05_01.models", "BlobContainer"),
    "Microsoft.Storage/storageAccounts/queueServices@2023-05-01":
        ("azure-mgmt-storage==21.2.1", "azure.mgmt.storage.v2023_05_01.models", "QueueServiceProperties"),
    "Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01":
        ("azure-mgmt-storage==21.2.1", "azure.mgmt.storage.v2023_05_01.models", "StorageQueue"),
    "Microsoft.Storage/storageAccounts/tableServices@2023-05-01":
        ("azure-mgmt-storage==21.2.1", "azure.mgmt.storage.v2023_05_01.models", "TableServiceProperties"),
    "Microsoft.Storage/storageAccounts/tableServices/tables@2023-05-01":
        ("azure-mgmt-storage==21.2.1", "azure.mgmt.storage.v2023_05_01.models", "Table"),
    "Microsoft.Web/serverfarms@2024-04-01":
        ("azure-mgmt-web==8.0.0", "azure.mgmt.web.v2024_04_01.models", "AppServicePlan"),
    "Microsoft.Web/sites@2024-04-01":
        ("azure-mgmt-web==8.0.0", "azure.mgmt.web.v2024_04_01.models", "Site"),
}

# Imported by the older wheels and not a dependency of the project.
SUPPORT = ["six==1.17.0"]

# Runs in the child process, with the unpacked wheel first on sys.path: prints the definitions reachable from the
# requested root models as JSON.
CHILD = r'''
import enum, inspect, json, re, sys
models = __import__(sys.argv[1], fromlist=["*"])
roots = sys.argv[2:]
SCALARS = {"str": "string", "int": "integer", "long": "integer", "float": "number", "bool": "boolean",
           "object": "any", "iso-8601": "string", "rfc-1123": "string", "duration": "string", "date": "string",
           "unix-time": "integer", "bytearray": "string", "base64": "string"}
definitions = {}

def enum_values(cls, attribute):
    annotation = str(inspect.signature(cls.__init__).parameters.get(attribute, inspect.Parameter(
        attribute, inspect.Parameter.KEYWORD_ONLY)).annotation)
    for name in re.findall(r"_models\.(\w+)", annotation):
        candidate = getattr(models, name, None)
        if isinstance(candidate, type) and issubclass(candidate, enum.Enum):
            return sorted(member.value for member in candidate)
    return None

def type_node(text, cls=None, attribute=None):
    if text.startswith("[") and text.endswith("]"):
        return {"type": "array", "items": type_node(text[1:-1])}
    if text.startswith("{") and text.endswith("}"):
        return {"type": "map", "values": type_node(text[1:-1])}
    if text in SCALARS:
        node = {"type": SCALARS[text]}
        values = enum_values(cls, attribute) if cls is not None and text == "str" else None
        if values:
            node["enum"] = values
        return node
    define(text)
    return {"$ref": text}

def define(name):
    if name in definitions:
        return
    cls = getattr(models, name)
    definitions[name] = None
    root = {"type": "object", "properties": {}}
    validation = getattr(cls, "_validation", {}) or {}
    for attribute, spec in cls._attribute_map.items():
        path = [part.replace("\\.", ".") for part in re.split(r"(?<!\\)\.", spec["key"])]
        node = root
        for part in path[:-1]:
            node = node["properties"].setdefault(part, {"type": "object", "properties": {}})
        leaf = type_node(spec["type"], cls, attribute)
        rules = validation.get(attribute, {})
        if rules.get("readonly"):
            leaf["readonly"] = True
        if rules.get("required") and not rules.get("readonly"):
            node.setdefault("required", []).append(path[-1])
        node["properties"][path[-1]] = leaf
    subtypes = getattr(cls, "_subtype_map", None) or {}
    for attribute, mapping in subtypes.items():
        key = cls._attribute_map[attribute]["key"]
        root["discriminator"] = {"property": key, "mapping": {value: sub for value, sub in mapping.items()}}
        for sub in mapping.values():
            define(sub)
    definitions[name] = root

for root in roots:
    define(root)
print(json.dumps(definitions, sort_keys=True))
'''


def unpack(requirement: str, directory: Path) -> Path:
    target = directory / requirement.replace("==", "-")
    downloads = directory / "wheels"
    download = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--disable-pip-version-check",
                "--dest", str(downloads), requirement]
    subprocess.run(download, check=True)  # noqa: S603 - our own interpreter, a pinned requirement
    name, version = requirement.split("==")
    (wheel,) = downloads.glob(f"{name.replace('-', '_')}-{version}-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(target)
    return target


def main() -> None:
    by_module: dict[tuple[str, str], list[str]] = {}
    for requirement, module_name, root in RESOURCE_TYPES.values():
        by_module.setdefault((requirement, module_name), []).append(root)
    output: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as temporary:
        unpacked: dict[str, Path] = {}
        support = [str(unpack(requirement, Path(temporary))) for requirement in SUPPORT]
        definitions: dict[tuple[str, str], dict[str, object]] = {}
        for (requirement, module_name), roots in sorted(by_module.items()):
            if requirement not in unpacked:
                unpacked[requirement] = unpack(requirement, Path(temporary))
            path = [str(unpacked[requirement]), *support]
            code = f"import sys; sys.path[:0] = {path!r}; exec({CHILD!r})"
            child = [sys.executable, "-c", code, module_name, *sorted(set(roots))]
            result = subprocess.run(child, check=False, capture_output=True, text=True)  # noqa: S603 - our own code
            if result.returncode:
                sys.exit(f"{requirement} {module_name}: {result.stderr}")
            definitions[(requirement, module_name)] = json.loads(result.stdout)
    for resource_type, (requirement, module_name, root) in sorted(RESOURCE_TYPES.items()):
        output[resource_type] = {
            "source": f"{requirement} {module_name}.{root}",
            "root": root,
            "definitions": definitions[(requirement, module_name)],
        }
    OUTPUT.write_text(json.dumps(output, indent=1, sort_keys=True) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
