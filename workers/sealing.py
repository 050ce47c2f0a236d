"""Seals on the messages Phasegate's workflows send each other, checked where they arrive.

Anyone with access to the namespace can signal a workflow, so a phase's report, a relayed vote
and the health schedule's abort count only when sealed: the sending worker adds an HMAC-SHA256
over the signal, its target workflow and the message (`schemas/seal.py`) with a key it holds
outside history; the receiving worker checks it before the handler runs and leaves the seal at
`VERIFIED` or empty. Every worker of a deployment shares the key (`PHASEGATE_WORKER_KEY_FILE`);
the first key signs, any listed key verifies, so keys can be rotated without breaking replay.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from temporalio import workflow
from temporalio.worker import (
    HandleSignalInput,
    Interceptor,
    SignalChildWorkflowInput,
    SignalExternalWorkflowInput,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
    WorkflowOutboundInterceptor,
)

from schemas.seal import VERIFIED, Sealed, sealed_body

# Signals whose handlers take the raw payload (to record a malformed one) and whose payload
# may carry a seal.
SEALED_DICT_SIGNALS = frozenset(
    {
        "abort",
        "pause",
        "resume",
        "phase_progress",
        "relay_decision",
        "relay_hold",
        "stop_analysis",
    }
)
MIN_KEY_BYTES = 32


class SealKeys:
    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys or any(len(key) < MIN_KEY_BYTES for key in keys):
            raise ValueError(f"worker keys must be at least {MIN_KEY_BYTES} bytes each")
        self._keys = tuple(keys)

    def seal(self, signal: str, target: str, message: Any) -> str:
        return _mac(self._keys[0], sealed_body(signal, target, message))

    def verify(self, signal: str, target: str, message: Any, seal: object) -> bool:
        if not isinstance(seal, str) or not seal or not seal.isascii():
            return False  # a seal is hex; anything else is refused, never compared
        body = sealed_body(signal, target, message)
        return any(hmac.compare_digest(_mac(key, body), seal) for key in self._keys)


def _mac(key: bytes, body: bytes) -> str:
    return hmac.new(key, body, hashlib.sha256).hexdigest()


class SealInterceptor(Interceptor):
    """Seals what this worker's workflows send and checks what they receive."""

    def __init__(self, keys: Sequence[bytes]) -> None:
        self._keys = SealKeys(keys)

    def workflow_interceptor_class(
        self, input: WorkflowInterceptorClassInput
    ) -> type[WorkflowInboundInterceptor]:
        keys = self._keys

        class Outbound(WorkflowOutboundInterceptor):
            async def signal_child_workflow(self, input: SignalChildWorkflowInput) -> None:
                input.args = _sealed_args(keys, input.signal, input.child_workflow_id, input.args)
                await super().signal_child_workflow(input)

            async def signal_external_workflow(self, input: SignalExternalWorkflowInput) -> None:
                input.args = _sealed_args(keys, input.signal, input.workflow_id, input.args)
                await super().signal_external_workflow(input)

        class Inbound(WorkflowInboundInterceptor):
            def init(self, outbound: WorkflowOutboundInterceptor) -> None:
                super().init(Outbound(outbound))

            async def handle_signal(self, input: HandleSignalInput) -> None:
                target = workflow.info().workflow_id
                input.args = [_checked(keys, input.signal, target, arg) for arg in input.args]
                await super().handle_signal(input)

        return Inbound


def _sealed_args(keys: SealKeys, signal: str, target: str, args: Sequence[Any]) -> list[Any]:
    return [
        arg.model_copy(update={"seal": keys.seal(signal, target, arg)})
        if isinstance(arg, Sealed)
        else arg
        for arg in args
    ]


def _checked(keys: SealKeys, signal: str, target: str, arg: Any) -> Any:
    """The message with its seal replaced by the verdict: `VERIFIED` or empty. The handlers of
    sealed signals take the raw payload (to record a malformed one), so it arrives as a dict."""
    if signal in SEALED_DICT_SIGNALS and isinstance(arg, dict) and "seal" in arg:
        ok = keys.verify(signal, target, arg, arg["seal"])
        return {**arg, "seal": VERIFIED if ok else ""}
    return arg


DEFAULT_KEY_FILE = Path.home() / ".config" / "phasegate" / "worker.key"


def load_keys(key_file: str | None) -> list[bytes]:
    """The worker keys from `key_file`, one per line; without one, the user's own key file,
    made (mode 0600) the first time a worker starts."""
    path = Path(key_file) if key_file else DEFAULT_KEY_FILE
    if key_file is None and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as out:
            out.write(secrets.token_hex(32) + "\n")
    try:
        lines = path.read_text().split()
    except OSError as err:
        raise ValueError(f"PHASEGATE_WORKER_KEY_FILE: cannot read {path}: {err.strerror}") from None
    keys = [line.encode() for line in lines if line]
    if not keys or any(len(key) < MIN_KEY_BYTES for key in keys):
        raise ValueError(
            f"PHASEGATE_WORKER_KEY_FILE: {path} must hold keys of at least {MIN_KEY_BYTES} "
            "characters, one per line (e.g. `openssl rand -hex 32`)"
        )
    return keys
