"""Seals: a worker's HMAC over the signal, its target workflow and the message."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from schemas.decision_messages import AbortRequest
from workers.sealing import SealKeys, load_keys

KEY = b"k" * 32
OLD_KEY = b"o" * 32
ABORT = AbortRequest(
    reason="slo breached", by="health:checkout", sent_at=datetime(2026, 12, 1, tzinfo=UTC)
)


def test_a_seal_holds_for_its_signal_target_and_message_only() -> None:
    keys = SealKeys([KEY])
    seal = keys.seal("abort", "launch-1", ABORT)
    assert keys.verify("abort", "launch-1", ABORT, seal)
    # The receiver gets the message as the JSON the sender's model became.
    received = {**ABORT.model_dump(mode="json"), "seal": seal}
    assert keys.verify("abort", "launch-1", received, seal)
    assert not keys.verify("abort", "launch-2", ABORT, seal)
    assert not keys.verify("approve", "launch-1", ABORT, seal)
    assert not keys.verify("abort", "launch-1", ABORT.model_copy(update={"reason": "x"}), seal)
    assert not keys.verify("abort", "launch-1", ABORT, "verified")
    assert not keys.verify("abort", "launch-1", ABORT, "")


@pytest.mark.parametrize("seal", ["é", "\x00", "\uff41" * 64, 7, None, ["ab"]])
def test_a_seal_that_is_not_hex_text_is_refused_without_error(seal: object) -> None:
    assert not SealKeys([KEY]).verify("abort", "launch-1", ABORT, seal)


def test_a_rotated_key_still_verifies_what_the_old_one_sealed() -> None:
    old = SealKeys([OLD_KEY]).seal("abort", "launch-1", ABORT)
    rotated = SealKeys([KEY, OLD_KEY])
    assert rotated.verify("abort", "launch-1", ABORT, old)
    assert rotated.seal("abort", "launch-1", ABORT) == SealKeys([KEY]).seal(
        "abort", "launch-1", ABORT
    )
    assert not SealKeys([KEY]).verify("abort", "launch-1", ABORT, old)


def test_short_keys_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        SealKeys([b"short"])
    weak = tmp_path / "worker.key"
    weak.write_text("short\n")
    with pytest.raises(ValueError, match=r"PHASEGATE_WORKER_KEY_FILE: .* at least 32 characters"):
        load_keys(str(weak))
    with pytest.raises(ValueError, match="cannot read"):
        load_keys(str(tmp_path / "missing.key"))


def test_keys_are_read_one_per_line(tmp_path: Path) -> None:
    path = tmp_path / "worker.key"
    path.write_text(f"{KEY.decode()}\n{OLD_KEY.decode()}\n")
    assert load_keys(str(path)) == [KEY, OLD_KEY]
