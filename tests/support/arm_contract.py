"""Contract checks for ARM responses against the official Swagger files (storage.json, keyvault.json, keys.json).

``ArmContract(spec_path).validate(operation_id, status, body)`` validates with jsonschema (Draft 4,
Swagger's dialect), resolving ``$ref``s across files: ``./common.json#/definitions/Sku`` is loaded
next to the spec. References to files that were not copied (``common-types/...``) become open schemas
(anything validates), so the check covers every type the copied files define.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema

from emulators.specs import SPECS_ROOT

SPECS = SPECS_ROOT  # the vendored copies in emulators/specs
STORAGE_SPEC = Path("storage/resource-manager/Microsoft.Storage/Storage/stable/2025-01-01/storage.json")
KEYVAULT_SPEC = Path("keyvault/resource-manager/Microsoft.KeyVault/KeyVault/stable/2024-11-01/keyvault.json")
KEYVAULT_KEYS_SPEC = Path("keyvault/resource-manager/Microsoft.KeyVault/KeyVault/stable/2024-11-01/keys.json")
KEYVAULT_COMMON = Path("keyvault/resource-manager/Microsoft.KeyVault/stable/2024-11-01/common.json")


class ContractError(AssertionError):
    pass


class ArmContract:
    def __init__(self, spec_path: str | Path, *, extra_files: dict[str, Path] | None = None) -> None:
        self.spec_path = Path(spec_path)
        self.extra_files = dict(extra_files or {})
        self._files: dict[Path, dict[str, Any] | None] = {}
        self.definitions: dict[str, Any] = {"__open__": {}}
        spec = self._load(self.spec_path)
        if spec is None:
            raise FileNotFoundError(self.spec_path)
        self._responses: dict[str, dict[str, Any]] = {}
        for item in spec["paths"].values():
            for method, op in item.items():
                if method != "parameters":
                    self._responses[op["operationId"]] = op["responses"]

    def _load(self, path: Path) -> dict[str, Any] | None:
        path = path.resolve() if path.exists() else path
        if path not in self._files:
            self._files[path] = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
        return self._files[path]

    def _file_for(self, base: Path, ref_file: str) -> Path:
        if ref_file in self.extra_files:
            return self.extra_files[ref_file]
        return (base.parent / ref_file).resolve()

    def _rewrite(self, node: Any, base: Path) -> Any:
        """Copy ``node`` with every $ref pointing into ``self.definitions`` (loading definitions lazily)."""
        if isinstance(node, list):
            return [self._rewrite(v, base) for v in node]
        if not isinstance(node, dict):
            return node
        if "$ref" in node:
            return {"$ref": "#/definitions/" + self._definition(node["$ref"], base)}
        return {k: self._rewrite(v, base) for k, v in node.items() if not k.startswith("x-ms-")}

    def _definition(self, ref: str, base: Path) -> str:
        ref_file, _, pointer = ref.partition("#")
        target = self._file_for(base, ref_file) if ref_file else base
        name = pointer.rsplit("/", 1)[-1]
        key = f"{target.name}:{name}" if ref_file else f"{base.name}:{name}"
        if key in self.definitions:
            return key
        document = self._load(target)
        if document is None or name not in document.get("definitions", {}):
            return "__open__"
        self.definitions[key] = {}  # placeholder for recursive types
        self.definitions[key] = self._rewrite(document["definitions"][name], target)
        return key

    def schema_for(self, operation_id: str, status: int) -> dict[str, Any] | None:
        responses = self._responses.get(operation_id)
        if responses is None:
            raise ContractError(f"operation {operation_id!r} is not in {self.spec_path.name}")
        response = responses.get(str(status))
        if response is None:
            if 200 <= status < 300:
                raise ContractError(f"{operation_id} does not define status {status}; it defines {sorted(responses)}")
            response = responses.get("default")
        if response is None or "schema" not in response:
            return None
        root = self._rewrite(response["schema"], self.spec_path.resolve())
        return {**root, "definitions": self.definitions}

    def validate(self, operation_id: str, status: int, body: Any) -> None:
        schema = self.schema_for(operation_id, status)
        if schema is None:
            return
        validator = jsonschema.Draft4Validator(schema)
        problems = sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path))
        if problems:
            detail = "; ".join(f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in problems[:5])
            raise ContractError(f"{operation_id} {status} violates {self.spec_path.name}: {detail}")


def storage_contract(root: Path = SPECS) -> ArmContract:
    return ArmContract(root / STORAGE_SPEC)


def keyvault_contract(root: Path = SPECS) -> ArmContract:
    # keyvault.json refers to "common.json" in its own folder; the copy sits in the pre-TypeSpec folder.
    return ArmContract(root / KEYVAULT_SPEC, extra_files={"common.json": root / KEYVAULT_COMMON})


def keyvault_keys_contract(root: Path = SPECS) -> ArmContract:
    """Microsoft.KeyVault/vaults/keys (keys.json, next to keyvault.json, whose Resource it extends)."""
    return ArmContract(root / KEYVAULT_KEYS_SPEC, extra_files={"common.json": root / KEYVAULT_COMMON})
