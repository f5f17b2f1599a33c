"""Contract checks: validate response bodies against the official keys.json (Swagger 2.0) schemas.

``KeysContract(path).validate(operation_id, status, body)`` resolves the spec's local ``$ref``s
(``#/definitions/...``) and validates with jsonschema (Draft 4, Swagger's dialect). ``operation_id`` may
be a spec operationId (``GetKey``) or an audit operationName (``KeyGet``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema

from emulators.specs import spec_path

SPEC_RELATIVE = Path("keyvault/data-plane/Keys/stable/2026-04-01/keys.json")

OPERATION_IDS = {
    "KeyCreate": "CreateKey",
    "KeyImport": "ImportKey",
    "KeyGet": "GetKey",
    "KeyUpdate": "UpdateKey",
    "KeyList": "GetKeys",
    "KeyListVersions": "GetKeyVersions",
    "KeyDelete": "DeleteKey",
    "KeyGetDeleted": "GetDeletedKey",
    "KeyListDeleted": "GetDeletedKeys",
    "KeyRecover": "RecoverDeletedKey",
    "KeyPurge": "PurgeDeletedKey",
    "KeyRotate": "RotateKey",
    "KeyGetRotationPolicy": "GetKeyRotationPolicy",
    "KeyUpdateRotationPolicy": "UpdateKeyRotationPolicy",
    "KeyEncrypt": "encrypt",
    "KeyDecrypt": "decrypt",
    "KeyWrap": "wrapKey",
    "KeyUnwrap": "unwrapKey",
    "KeySign": "sign",
    "KeyVerify": "verify",
    "GetRandomBytes": "GetRandomBytes",
    "KeyBackup": "BackupKey",
    "KeyRestore": "RestoreKey",
}


class ContractError(AssertionError):
    pass


class KeysContract:
    def __init__(self, spec_path: str | Path) -> None:
        self.spec: dict[str, Any] = json.loads(Path(spec_path).read_text(encoding="utf-8"))
        self._responses: dict[str, dict[str, Any]] = {}
        for item in self.spec["paths"].values():
            for method, op in item.items():
                if method == "parameters":
                    continue
                self._responses[op["operationId"]] = op["responses"]

    def operation_ids(self) -> set[str]:
        return set(self._responses)

    def schema_for(self, operation_id: str, status: int) -> dict[str, Any] | None:
        op = OPERATION_IDS.get(operation_id, operation_id)
        if op not in self._responses:
            raise ContractError(f"operation {operation_id!r} is not in the spec")
        responses = self._responses[op]
        response = responses.get(str(status))
        if response is None:
            if 200 <= status < 300:
                raise ContractError(f"{op} does not define status {status}; it defines {sorted(responses)}")
            response = responses.get("default")
        if response is None or "schema" not in response:
            return None
        return {**response["schema"], "definitions": self.spec["definitions"]}

    def validate(self, operation_id: str, status: int, body: Any) -> None:
        schema = self.schema_for(operation_id, status)
        if schema is None:
            if body not in (None, b"", ""):
                raise ContractError(f"{operation_id} {status} defines no body, got {body!r}")
            return
        validator = jsonschema.Draft4Validator(schema)
        errors = sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path))
        if errors:
            detail = "; ".join(f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors[:5])
            raise ContractError(f"{operation_id} {status} response violates keys.json: {detail}")


def find_spec() -> Path:
    """keys.json among the vendored Azure specs (see emulators.specs)."""
    return spec_path(str(SPEC_RELATIVE))
