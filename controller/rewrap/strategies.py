"""What is done to one blob: re-wrap its content key (the default) or rewrite it under a new one, and
the one place that picks between them (``walker_for``).

Re-wrap: the blob's ``encryptiondata`` envelope is parsed and, when the content key is wrapped by
another version of the target key, unwrapped (one Key Vault call), wrapped again locally with the
target version's public key and written back under the blob's ETag. The blob's data never moves.

* One successful unwrap per blob and envelope: a lost ETag race that left the wrapped key as it was
  reuses the payload already unwrapped. Blobs already on the target version cost none.
* Every other metadata entry is written back as it was read (Set Blob Metadata replaces them all).

Rewrite replaces a blob's content key, not just its wrapping: for a suspected content-key compromise
(or to re-encrypt data server-side after CMK or an encryption scope was enabled). Per blob the
BlobRewriter (an adapter: azure-storage-blob does the encryption) decrypts the blob as read at its
listed ETag, writes a freshly encrypted copy (new content key, wrapped by the target version) to a
staging blob, verifies that copy by downloading and decrypting it with the target key and comparing
digests, and only then swaps it in with a server-side copy conditional on the listed ETag; then it
deletes the staging blob. The blob is never missing (the swap is one Copy Blob onto the existing
name) and never replaced by data that was not verified; a concurrent writer makes the swap fail
(412 -> Conflict) and the blob is read again and decided afresh, so that writer's update stands.

A blob its application writes more often than a rewrite takes (read, stage, verify, swap: seconds on
a busy host) would lose every race. Two things keep rewrite up with it: when the blob, read again
after a lost race, is wrapped by the target version and holds another content key than the one it
was listed with, the application has uploaded it anew since -- a fresh content key under the target
version, which is what the rewrite is for -- and it is counted ``superseded`` (done, nothing written;
both content keys are unwrapped to tell this from a re-wrap, which keeps the content key). And a blob
that still loses every race of its round comes back at the end of its page (the walker).

Readers: azure-storage-blob reads an encrypted blob with two requests (Get Blob Properties for the
envelope, then Get Blob) and does not pin the ETag between them unless the caller passes one. A read
that straddles ANY overwrite of the blob -- the swap here, or an application's own upload -- fails
once with "Decryption failed" and succeeds when retried. Re-wrap has no such window (the content key
does not change, only its wrapping). Readers that cannot retry should pass etag/match_condition.

Costs per rewritten blob: two Key Vault unwraps (read, verify), the blob read twice and written twice
(staging, copy), one delete. Blobs without a client-side envelope are not rewritten (not_encrypted):
moving plain blobs into an encryption scope is a server-side copy this runner does not do yet.

Malformed envelopes and keys of other vaults or keys are recorded with a stable reason and skipped.
Content keys and plaintext are never logged, never put into an error or into the report.
"""

from __future__ import annotations

import functools
import hmac
import time
from collections.abc import Callable

from controller.envelope import Envelope, MalformedReason, WrappedContentKey, find_envelope, parse_envelope
from controller.errors import (
    ControllerError,
    Forbidden,
    InvalidKeyId,
    MalformedEnvelope,
    NotFound,
    PermanentError,
)
from controller.model import KeyRef
from controller.ports import BlobItem, BlobRewriter, BlobStore, KeyUnwrapper, KeyWrapper, RewrapObserver, RewrapPorts
from controller.rewrap.outcomes import BlobResult, Outcome, ProblemReason
from controller.rewrap.walker import BlobStrategy, Calls, ContainerWalker, RetriesExhausted, RewrapOptions
from controller.rewrap.work import RewrapMode
from controller.rewrap.wrapping import RSA_OAEP_256, UNWRAP_ALGORITHMS, WRAP_ALGORITHMS
from controller.vault_policy import VaultPolicy

#: Staging blobs live under this prefix in the same container; runs never treat them as data.
STAGING_PREFIX = ".cmk-rewrite/"


def _versioned_target(key_id: str, policy: VaultPolicy, mode: RewrapMode) -> KeyRef:
    target = policy.parse_key_id(key_id)
    if not target.is_versioned:
        raise InvalidKeyId(f"{mode.value} target {key_id} must name a key version")
    return target


def _envelope_of(
    item: BlobItem, target: KeyRef, policy: VaultPolicy, result: BlobResult
) -> tuple[str, Envelope, KeyRef] | None:
    """The blob's envelope, its metadata name and wrapping key version when the target key (any
    version) wraps it; else None with ``result`` set to why the blob is left alone."""
    try:
        entry = find_envelope(item.metadata)
        if entry is None:
            result.outcome = Outcome.NOT_ENCRYPTED
            return None
        envelope = parse_envelope(entry[1])
    except MalformedEnvelope as err:
        result.fail(ProblemReason.MALFORMED_ENVELOPE, err.reason)
        return None
    try:
        key = policy.parse_key_id(envelope.wrapped_key.key_id)
    except InvalidKeyId:
        result.fail(ProblemReason.UNKNOWN_KEY, "not_key_vault_key")
        return None
    if not key.same_key(target):
        result.fail(ProblemReason.UNKNOWN_KEY, "other_key")
        return None
    return entry[0], envelope, key


class RewrapStrategy:
    """Re-wraps a blob's content key onto the key version ``wrapper.key_id`` names."""

    mode = RewrapMode.REWRAP

    def __init__(
        self,
        *,
        store: BlobStore,
        unwrapper: KeyUnwrapper,
        wrapper: KeyWrapper,
        policy: VaultPolicy,
        dry_run: bool = False,
        wrap_algorithm: str | None = None,
    ) -> None:
        self._store = store
        self._unwrapper = unwrapper
        self._wrapper = wrapper
        self._policy = policy
        self._dry_run = dry_run
        self._wrap_algorithm = wrap_algorithm
        self._target = _versioned_target(wrapper.key_id, policy, self.mode)

    @property
    def target(self) -> KeyRef:
        return self._target

    def includes(self, item: BlobItem) -> bool:
        return True

    def attempt(self, container: str, current: BlobItem, result: BlobResult, calls: Calls) -> None:
        decided = self._decide(current, result)
        if decided is None:
            return
        entry_name, envelope = decided
        if self._dry_run:
            result.outcome = Outcome.REWRAPPED
            return
        try:
            payload = self._unwrap(envelope, result, calls)
            envelope.check_payload(payload)
            algorithm = self._target_algorithm(envelope.wrapped_key.algorithm)
            rewrapped = envelope.with_wrapped_key(
                WrappedContentKey(
                    key_id=self._target.uri,
                    encrypted_key=self._wrapper.wrap(algorithm, payload),
                    algorithm=algorithm,
                )
            )
        except MalformedEnvelope as err:
            result.fail(ProblemReason.MALFORMED_ENVELOPE, err.reason)
            return
        except Forbidden:
            result.fail(ProblemReason.KEY_FORBIDDEN)
            return
        except NotFound:
            result.fail(ProblemReason.KEY_NOT_FOUND)
            return
        except PermanentError as err:
            result.fail(ProblemReason.UNWRAP_FAILED, type(err).__name__)
            return
        except RetriesExhausted:
            result.fail(ProblemReason.THROTTLED, "unwrap")
            return
        metadata = dict(current.metadata)
        metadata[entry_name] = rewrapped.to_metadata_value()
        write = functools.partial(self._store.set_metadata, container, current.name, metadata, if_match=current.etag)
        _change_blob(write, result, calls, forbidden=ProblemReason.WRITE_FORBIDDEN,
                     failed=ProblemReason.WRITE_FAILED, call_name="write", done=Outcome.REWRAPPED)

    def _decide(self, item: BlobItem, result: BlobResult) -> tuple[str, Envelope] | None:
        """The envelope to re-wrap and its metadata name, or None with ``result`` set to the outcome."""
        found = _envelope_of(item, self._target, self._policy, result)
        if found is None:
            return None
        entry_name, envelope, key = found
        if key.version == self._target.version:
            result.outcome = Outcome.ALREADY_CURRENT
            return None
        if envelope.wrapped_key.algorithm not in UNWRAP_ALGORITHMS:
            result.fail(ProblemReason.UNSUPPORTED_WRAP_ALGORITHM, envelope.wrapped_key.algorithm[:32])
            return None
        return entry_name, envelope

    def _unwrap(self, envelope: Envelope, result: BlobResult, calls: Calls) -> bytes:
        """The content key, unwrapped once per blob and wrapped key: a lost ETag race that left the
        wrapped key unchanged reuses it instead of a second Key Vault call."""
        return _unwrap_once(self._unwrapper, envelope.wrapped_key, result, calls)

    def _target_algorithm(self, source_algorithm: str) -> str:
        if self._wrap_algorithm is not None:
            return self._wrap_algorithm
        return source_algorithm if source_algorithm in WRAP_ALGORITHMS else RSA_OAEP_256


class RewriteStrategy:
    """Rewrites every blob wrapped by any version of the target key under a new content key."""

    mode = RewrapMode.REWRITE

    def __init__(
        self,
        *,
        rewriter: BlobRewriter,
        unwrapper: KeyUnwrapper,
        target_key_id: str,
        policy: VaultPolicy,
        dry_run: bool = False,
    ) -> None:
        self._rewriter = rewriter
        self._unwrapper = unwrapper
        self._policy = policy
        self._dry_run = dry_run
        self._target = _versioned_target(target_key_id, policy, self.mode)

    @property
    def target(self) -> KeyRef:
        return self._target

    def includes(self, item: BlobItem) -> bool:
        return not item.name.startswith(STAGING_PREFIX)

    def attempt(self, container: str, current: BlobItem, result: BlobResult, calls: Calls) -> None:
        found = _envelope_of(current, self._target, self._policy, result)
        if found is None:
            return
        if self._dry_run:
            result.outcome = Outcome.REWRITTEN
            return
        _, envelope, key = found
        if key.version == self._target.version and self._content_key_replaced(envelope, result, calls):
            result.outcome = Outcome.SUPERSEDED
            return
        _change_blob(functools.partial(self._rewriter.rewrite, container, current), result, calls,
                     forbidden=ProblemReason.KEY_FORBIDDEN, failed=ProblemReason.REWRITE_FAILED,
                     call_name="rewrite", done=Outcome.REWRITTEN)

    def _content_key_replaced(self, envelope: Envelope, result: BlobResult, calls: Calls) -> bool:
        """Whether the blob, read again after a lost race, no longer holds the content key it was listed
        with: its application uploaded it anew (a fresh content key) since.

        A different wrapped key is not enough to tell: a re-wrap onto the target version (another job,
        an operator) changes the wrapped key and keeps the content key. So both are unwrapped (one Key
        Vault call each, the listed one once per round) and compared; the keys live only for the
        comparison (the listed one until the blob's round ends). Undecided (the listed key cannot be
        unwrapped any more, a malformed payload, throttling past the budget): False, and the rewrite
        goes ahead and reports what it meets."""
        listed = result.listed
        try:
            entry = find_envelope(listed.metadata) if listed is not None else None
            if entry is None:
                return False
            before = parse_envelope(entry[1])
            if before.wrapped_key == envelope.wrapped_key:
                return False  # the same content key (the application wrote metadata only, or nothing)
            old = _content_key(self._unwrapper, before, result, calls, keep=True)
            new = _content_key(self._unwrapper, envelope, result, calls, keep=False)
        except (ControllerError, RetriesExhausted):
            return False
        return not hmac.compare_digest(old, new)


def walker_for(
    mode: RewrapMode,
    ports: RewrapPorts,
    *,
    policy: VaultPolicy,
    options: RewrapOptions,
    observer: RewrapObserver | None = None,
    sleep: Callable[[float], None] = time.sleep,
    monotonic: Callable[[], float] = time.monotonic,
) -> ContainerWalker:
    """The walker for ``mode`` over ``ports``: the one place the strategy is picked.

    Raises PermanentError when rewrite is asked of ports that cannot rewrite.
    """
    strategy: BlobStrategy
    if mode is RewrapMode.REWRAP:
        strategy = RewrapStrategy(
            store=ports.store,
            unwrapper=ports.unwrapper,
            wrapper=ports.wrapper,
            policy=policy,
            dry_run=options.dry_run,
            wrap_algorithm=options.wrap_algorithm,
        )
    else:
        if ports.rewriter is None:
            raise PermanentError("rewrite is not configured on this host")
        strategy = RewriteStrategy(
            rewriter=ports.rewriter,
            unwrapper=ports.unwrapper,
            target_key_id=ports.wrapper.key_id,
            policy=policy,
            dry_run=options.dry_run,
        )
    return ContainerWalker(
        store=ports.store,
        checkpoint=ports.checkpoint,
        strategy=strategy,
        options=options,
        observer=observer,
        sleep=sleep,
        monotonic=monotonic,
    )


def _unwrap_once(unwrapper: KeyUnwrapper, wrapped: WrappedContentKey, result: BlobResult, calls: Calls, *,
                 keep: bool = True) -> bytes:
    """The payload ``wrapped`` holds: the one ``result`` keeps for its round when it is that wrapped key's,
    else one Key Vault call (its payload then kept in ``result`` for the round when ``keep``)."""
    if result.unwrapped is not None and result.unwrapped[0] == wrapped:
        return result.unwrapped[1]

    def unwrap() -> bytes:
        result.unwrap_calls += 1
        return unwrapper.unwrap(wrapped.key_id, wrapped.algorithm, wrapped.encrypted_key)

    payload = calls.call(unwrap, result)
    if keep:
        result.unwrapped = (wrapped, payload)
    return payload


def _content_key(unwrapper: KeyUnwrapper, envelope: Envelope, result: BlobResult, calls: Calls, *,
                 keep: bool) -> bytes:
    """The content key ``envelope`` wraps (its payload without the protocol prefix).

    Raises MalformedEnvelope when the algorithm is not one Key Vault unwraps or the payload does not fit
    the envelope's protocol."""
    if envelope.wrapped_key.algorithm not in UNWRAP_ALGORITHMS:
        raise MalformedEnvelope(MalformedReason.INVALID_FIELD, "unsupported wrap algorithm")
    payload = _unwrap_once(unwrapper, envelope.wrapped_key, result, calls, keep=keep)
    envelope.check_payload(payload)
    return payload[len(envelope.payload_prefix):]


def _change_blob(change: Callable[[], object], result: BlobResult, calls: Calls, *, forbidden: ProblemReason,
                 failed: ProblemReason, call_name: str, done: Outcome) -> None:
    """Run the blob's one change (a metadata write, or a rewrite): a Conflict propagates (the walker reads
    the blob again); a vanished blob, a refusal, a permanent failure or exhausted retries end the blob
    with that outcome; otherwise it counts one write and ends ``done``."""
    try:
        calls.call(change, result)
    except NotFound:
        result.outcome = Outcome.VANISHED
        return
    except Forbidden:
        result.fail(forbidden)
        return
    except PermanentError as err:
        result.fail(failed, type(err).__name__)
        return
    except RetriesExhausted:
        result.fail(ProblemReason.THROTTLED, call_name)
        return
    result.writes += 1
    result.outcome = done
