"""Hostile payloads for the intake routes: key URIs and vault names an attacker would try, a hypothesis
strategy of event-shaped deliveries built from them, and a seeded mutator over the recorded event corpus
(tests/data/events) re-pointed at the sandbox's vault so that mutations reach past the vault check.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

CORPUS = Path(__file__).resolve().parents[1] / "data" / "events"
KEY_EVENT_TYPES = ("Microsoft.KeyVault.KeyNewVersionCreated", "Microsoft.KeyVault.KeyNearExpiry",
                   "Microsoft.KeyVault.KeyExpired")
METADATA_ORIGINS = ("http://169.254.169.254", "https://169.254.169.254", "http://169.254.169.254:80",
                    "http://[fd00:ec2::254]", "http://168.63.129.16", "http://metadata.azure.internal",
                    "http://[::ffff:169.254.169.254]")


@dataclass(frozen=True, slots=True)
class Targets:
    """What the hostile URIs point at: the allowed vault and the loopback listeners that must never be reached."""

    vault_origin: str  # https://127.0.0.1:<port>, the only entry of CMK_VAULTS
    vault_topic: str  # the vault's ARM resource id
    keys: tuple[str, ...]  # real key names in it
    listeners: tuple[str, ...]  # host:port of each listener

    @property
    def vault_netloc(self) -> str:
        return self.vault_origin.split("://", 1)[1]

    def hostile_origins(self) -> list[str]:
        """Origins other than the allowed vault, or the allowed vault reached by a trick."""
        vault = self.vault_netloc
        origins: list[str] = [f"http://{vault}"]  # plain http to the right host
        for listener in self.listeners:
            host, port = listener.rsplit(":", 1)
            origins += [
                f"https://{listener}", f"http://{listener}",
                f"https://{vault}@{listener}",  # userinfo: looks like the vault, goes to the listener
                f"https://user:secret@{listener}",
                f"https://{listener}\\@{vault}", f"https://{listener}#@{vault}", f"https://{listener}?@{vault}",
                f"https://localhost:{port}", f"https://{vault}.{host}:{port}",
                f"https://2130706433:{port}", f"https://0x7f000001:{port}", f"https://0177.0.0.1:{port}",
                f"https://127.1:{port}", f"https://{host}:{port}/vault.azure.net",
                f"https://{host.upper()}:{port}", f"https://{host}.:{port}", f"HTTPS://{listener}",
                f"https://{host}:0{port}", f"https://{host}%2e:{port}",
            ]
        origins += [f"https://user@{vault}", f"https://{vault}:443", "https://evil.vault.azure.net",
                    "https://contoso.vault.azure.net.attacker.example", "https://vault.azure.net",
                    "file:///etc/passwd", "ftp://127.0.0.1/", "javascript:alert(1)", "//127.0.0.1/keys"]
        return origins + list(METADATA_ORIGINS)

    def key_uris(self) -> list[str]:
        paths = [f"/keys/{key}/0123456789abcdef0123456789abcdef" for key in self.keys[:2]] + [
            "/keys/../secrets/x", "/keys/storage-cmk", "/metadata/identity/oauth2/token?resource=https://vault.azure.net",
        ]
        return [origin + path for origin in self.hostile_origins() for path in paths]


def hostile_text() -> st.SearchStrategy[str]:
    return st.one_of(
        st.text(max_size=40),
        st.sampled_from(["", " ", "\x00", "\u202e", "../../", "%00", "${jndi:ldap://127.0.0.1/a}",
                         "'; DROP TABLE x;--", "<script>", "\ud7ff" * 3, "A" * 5000]),
    )


def json_values(depth: int = 3) -> st.SearchStrategy[Any]:
    scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), hostile_text())
    return st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                         st.dictionaries(hostile_text(), inner, max_size=4)),
                        max_leaves=12)


def deliveries(targets: Targets) -> st.SearchStrategy[Any]:
    """Event Grid and CloudEvents deliveries whose fields are drawn from the hostile values."""
    uris = st.sampled_from(targets.key_uris())
    vault_names = st.sampled_from(["kv-cmk-reliability", "evil", "127.0.0.1", "169.254.169.254", ""])
    maybe = st.one_of(st.none(), json_values())
    data = st.fixed_dictionaries(
        {"Id": st.one_of(uris, maybe), "VaultName": st.one_of(vault_names, maybe),
         "ObjectType": st.sampled_from(["Key", "Secret", "Certificate", "key", ""]),
         "ObjectName": st.one_of(st.sampled_from(targets.keys), hostile_text()),
         "Version": st.one_of(st.just("0123456789abcdef0123456789abcdef"), hostile_text()),
         "NBF": st.one_of(st.integers(), st.floats(allow_nan=False), hostile_text()),
         "EXP": st.one_of(st.integers(), st.floats(allow_nan=False), hostile_text())},
    )
    topics = st.one_of(st.just(targets.vault_topic), hostile_text(),
                       st.just(targets.vault_topic.replace("kv-cmk-reliability", "kv-evil")))
    grid = st.fixed_dictionaries(
        {"id": st.one_of(st.uuids().map(str), hostile_text()), "topic": topics,
         "subject": st.one_of(st.sampled_from(targets.keys), hostile_text()),
         "eventType": st.one_of(st.sampled_from(KEY_EVENT_TYPES), hostile_text()),
         "eventTime": st.one_of(st.just("2026-11-30T12:00:00Z"), hostile_text()),
         "dataVersion": st.sampled_from(["1", "", "2"]), "metadataVersion": st.just("1"),
         "data": st.one_of(data, maybe)},
        optional={"validationUrl": uris},
    )
    cloud = st.fixed_dictionaries(
        {"specversion": st.sampled_from(["1.0", "0.3", ""]), "id": st.uuids().map(str), "source": topics,
         "subject": st.one_of(st.sampled_from(targets.keys), hostile_text()),
         "type": st.one_of(st.sampled_from(KEY_EVENT_TYPES), hostile_text()),
         "time": st.just("2026-11-30T12:00:00Z"), "data": st.one_of(data, maybe)},
    )
    validation = st.fixed_dictionaries(
        {"id": st.uuids().map(str), "topic": topics, "subject": st.just(""),
         "eventType": st.just("Microsoft.EventGrid.SubscriptionValidationEvent"),
         "eventTime": st.just("2026-11-30T12:00:00Z"), "dataVersion": st.just("2"),
         "data": st.fixed_dictionaries({"validationCode": hostile_text(), "validationUrl": uris})},
    )
    event = st.one_of(grid, cloud, validation)
    return st.one_of(event, st.lists(event, min_size=1, max_size=4), json_values())


def forged_events(targets: Targets, versions: dict[str, str], count: int, seed: int) -> list[dict[str, Any]]:
    """Well-formed events about the managed vault's real keys that are not true: versions the vault never
    made, and expiry of keys that are live (``versions``: each key's current version)."""
    chooser = random.Random(seed)
    vault_name = targets.vault_topic.rsplit("/", 1)[-1]
    events = []
    for index in range(count):
        key = targets.keys[index % len(targets.keys)]
        event_type = KEY_EVENT_TYPES[index % len(KEY_EVENT_TYPES)]
        version = versions[key] if event_type != KEY_EVENT_TYPES[0] else f"{chooser.getrandbits(128):032x}"
        events.append({
            "id": f"forged-{seed}-{index}", "topic": targets.vault_topic, "subject": key, "eventType": event_type,
            "eventTime": "2026-11-30T12:00:00Z", "dataVersion": "1", "metadataVersion": "1",
            "data": {"Id": f"{targets.vault_origin}/keys/{key}/{version}", "VaultName": vault_name,
                     "ObjectType": "Key", "ObjectName": key, "Version": version, "NBF": 1764460800,
                     "EXP": 1764460800 + 3600},
        })
    return events


# -- the mutation corpus --------------------------------------------------------------------------

def corpus(targets: Targets) -> list[Any]:
    """The recorded deliveries, re-pointed at the sandbox vault, its keys and its topic."""
    documents = []
    for path in sorted(CORPUS.glob("*.json")):
        text = path.read_text(encoding="utf-8")
        for cloud_host in ("sample-kv.vault.azure.net", "contoso-cmk.vault.azure.net"):
            text = text.replace(f"https://{cloud_host}", targets.vault_origin)
        documents.append(_repoint(json.loads(text), targets))
    return documents


def _repoint(document: Any, targets: Targets) -> Any:
    if isinstance(document, list):
        return [_repoint(item, targets) for item in document]
    if isinstance(document, dict):
        repointed = {}
        for name, original in document.items():
            value = original
            if name in ("topic", "source") and isinstance(value, str) and "Microsoft.KeyVault/vaults/" in value:
                value = targets.vault_topic
            elif name in ("subject", "ObjectName") and isinstance(value, str) and "/" not in value:
                value = targets.keys[0]
            repointed[name] = _repoint(value, targets)
        if isinstance(repointed.get("Id"), str) and "/keys/" in repointed["Id"]:
            repointed["Id"] = repointed["Id"].replace(repointed["Id"].split("/keys/")[1].split("/")[0], targets.keys[0])
        return repointed
    return document


class Mutator:
    """Seeded structural and byte-level mutations of corpus documents; each yields the bytes to send."""

    def __init__(self, targets: Targets, seed: int) -> None:
        self.random = random.Random(seed)
        self.targets = targets
        self.documents = corpus(targets)
        self.uris = targets.key_uris()
        self.operators: list[Callable[[Any], bytes]] = [
            self._hostile_uri, self._hostile_uri, self._drop_member, self._retype_member, self._bit_flip,
            self._truncate, self._duplicate_member, self._wrap, self._huge_number, self._repeat_events,
            self._unicode_confusable,
        ]

    def next(self) -> bytes:
        document = json.loads(json.dumps(self.random.choice(self.documents)))
        return self.random.choice(self.operators)(document)

    def _objects(self, document: Any) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        stack = [document]
        while stack:
            item = stack.pop()
            if isinstance(item, dict):
                found.append(item)
                stack.extend(item.values())
            elif isinstance(item, list):
                stack.extend(item)
        return found

    def _hostile_uri(self, document: Any) -> bytes:
        for item in self._objects(document):
            for name in ("Id", "validationUrl", "topic", "source", "VaultName"):
                if name in item:
                    uri = self.random.choice(self.uris)
                    item[name] = uri if name != "VaultName" else uri.split("/")[2] if "//" in uri else uri
        return json.dumps(document).encode()

    def _drop_member(self, document: Any) -> bytes:
        objects = [item for item in self._objects(document) if item]
        if objects:
            target = self.random.choice(objects)
            del target[self.random.choice(list(target))]
        return json.dumps(document).encode()

    def _retype_member(self, document: Any) -> bytes:
        objects = [item for item in self._objects(document) if item]
        if objects:
            target = self.random.choice(objects)
            name = self.random.choice(list(target))
            target[name] = self.random.choice([None, 0, -1, 2**70, 1.5, True, [], {}, "", [target.get(name)],
                                               {"$ref": "#"}, "1e309", "NaN"])
        return json.dumps(document).encode()

    def _bit_flip(self, document: Any) -> bytes:
        raw = bytearray(json.dumps(document).encode())
        for _ in range(self.random.randint(1, 8)):
            raw[self.random.randrange(len(raw))] ^= 1 << self.random.randrange(8)
        return bytes(raw)

    def _truncate(self, document: Any) -> bytes:
        raw = json.dumps(document).encode()
        return raw[: self.random.randrange(len(raw))]

    def _duplicate_member(self, document: Any) -> bytes:
        raw = json.dumps(document)
        uri = self.random.choice(self.uris)
        return raw.replace('"Id": ', f'"Id": "{uri}", "Id": ', 1).replace('"id": ', '"id": "dup", "id": ', 1).encode()

    def _wrap(self, document: Any) -> bytes:
        depth = self.random.choice([2, 31, 33, 100, 5000])
        return ("[" * depth + json.dumps(document) + "]" * depth).encode()

    def _huge_number(self, document: Any) -> bytes:
        raw = json.dumps(document)
        return raw.replace('"NBF": ', '"NBF": 1e999999, "X": ', 1).replace('"EXP": ', '"EXP": -0.0e-99999, "Y": ', 1) \
            .encode()

    def _repeat_events(self, document: Any) -> bytes:
        events = document if isinstance(document, list) else [document]
        return json.dumps(events * self.random.choice([2, 50, 600])).encode()

    def _unicode_confusable(self, document: Any) -> bytes:
        raw = json.dumps(document, ensure_ascii=False)
        swaps = {"KeyVault": "KeyVau\u13deT", "vault": "v\u0430ult", "Key": "K\u0435y",
                 "127.0.0.1": "\uff11\uff12\uff17.0.0.1"}
        old = self.random.choice(list(swaps))
        return raw.replace(old, swaps[old]).encode()
