"""Payload encryption: what rests in history is ciphertext under a named key, every held key
decrypts, a changed payload or a missing key is one clear line, and key files are checked."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest
from temporalio.api.common.v1 import Payload
from temporalio.api.enums.v1 import EventType
from temporalio.api.failure.v1 import Failure
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter, DefaultFailureConverterWithEncodedAttributes
from temporalio.exceptions import ApplicationError

from activities.limits import SecretLimits
from schemas.basics import SecretRef
from schemas.plan import LaunchPlan
from tests.support.payloads import clear_text_in, write_key_file, write_private
from tests.support.plans import make_plan
from workers.codec import (
    ENCODING,
    KEY_ID,
    EncryptionCodec,
    PayloadKeys,
    PayloadKeysError,
    PayloadUnreadable,
    WithoutPayloadKeys,
    data_converter_for,
    encrypted_data_converter,
    load_payload_keys,
)
from workers.main import load_worker_limits
from workers.settings import Settings

FLAG_KEY = "codec-test-flag-7b2e"
OLD_KEY = bytes(range(32))
NEW_KEY = bytes(range(32, 64))


def keys(current: str, **held: bytes) -> PayloadKeys:
    return PayloadKeys(current=current, keys=held, source="test")


def recognisable_plan() -> LaunchPlan:
    plan = make_plan()
    router = plan.targets.router.model_copy(update={"flag_key": FLAG_KEY})
    return plan.model_copy(update={"targets": plan.targets.model_copy(update={"router": router})})


async def test_a_plan_round_trips_and_rests_as_ciphertext_under_the_current_key() -> None:
    converter = encrypted_data_converter(keys("p1", p1=OLD_KEY))
    plan = recognisable_plan()

    (payload,) = await converter.encode([plan])

    assert dict(payload.metadata) == {"encoding": ENCODING, KEY_ID: b"p1"}
    assert FLAG_KEY.encode() not in payload.data
    # The original payload's metadata (its json/plain encoding) is encrypted too.
    assert b"json/plain" not in payload.SerializeToString()
    assert await converter.decode([payload], [LaunchPlan]) == [plan]


async def test_each_payload_gets_a_fresh_nonce() -> None:
    codec = EncryptionCodec(keys("p1", p1=OLD_KEY))
    plain = Payload(metadata={"encoding": b"json/plain"}, data=b'"same"')

    first, second = await codec.encode([plain, plain])

    assert first.data[:12] != second.data[:12]
    assert first.data != second.data
    assert await codec.decode([first, second]) == [plain, plain]


async def test_rotation_old_payloads_decode_and_new_ones_use_the_current_key() -> None:
    before = EncryptionCodec(keys("p1", p1=OLD_KEY))
    after = EncryptionCodec(keys("p2", p1=OLD_KEY, p2=NEW_KEY))
    plain = Payload(metadata={"encoding": b"json/plain"}, data=b'{"weight": 10}')

    (old,) = await before.encode([plain])
    (new,) = await after.encode([plain])

    assert old.metadata[KEY_ID] == b"p1"
    assert new.metadata[KEY_ID] == b"p2"
    assert await after.decode([old, new]) == [plain, plain]


async def test_a_changed_byte_is_detected() -> None:
    codec = EncryptionCodec(keys("p1", p1=OLD_KEY))
    (payload,) = await codec.encode([Payload(metadata={"encoding": b"json/plain"}, data=b"1")])
    changed = bytearray(payload.data)
    changed[-1] ^= 0x01
    tampered = Payload(metadata=dict(payload.metadata), data=bytes(changed))

    with pytest.raises(PayloadUnreadable, match="payload key 'p1' does not authenticate"):
        await codec.decode([tampered])


async def test_a_payload_relabelled_with_another_held_key_id_is_detected() -> None:
    # Both keys are the same bytes: only the associated data tells the key ids apart.
    codec = EncryptionCodec(keys("p1", p1=OLD_KEY, p2=OLD_KEY))
    (payload,) = await codec.encode([Payload(metadata={"encoding": b"json/plain"}, data=b"1")])
    relabelled = Payload(metadata={"encoding": ENCODING, KEY_ID: b"p2"}, data=payload.data)

    with pytest.raises(PayloadUnreadable, match="payload key 'p2' does not authenticate"):
        await codec.decode([relabelled])


async def test_an_unknown_key_id_is_named_and_the_data_is_not() -> None:
    writer = EncryptionCodec(keys("retired-1", **{"retired-1": OLD_KEY}))
    reader = EncryptionCodec(keys("p2", p2=NEW_KEY))
    (payload,) = await writer.encode([Payload(metadata={"encoding": b"json/plain"}, data=b"1")])

    with pytest.raises(PayloadUnreadable) as caught:
        await reader.decode([payload])

    message = str(caught.value)
    assert "payload key 'retired-1'" in message
    assert "it holds p2" in message
    assert "\n" not in message
    assert base64.b64encode(payload.data).decode() not in message
    assert payload.data.hex() not in message


async def test_malformed_encrypted_payloads_are_one_line_each() -> None:
    codec = EncryptionCodec(keys("p1", p1=OLD_KEY))
    cases = {
        "has no encryption-key-id": Payload(metadata={"encoding": ENCODING}, data=b"x" * 40),
        "does not match": Payload(
            metadata={"encoding": ENCODING, KEY_ID: b"../../etc/passwd"}, data=b"x" * 40
        ),
        "is cut short": Payload(metadata={"encoding": ENCODING, KEY_ID: b"p1"}, data=b"short"),
    }
    for expected, payload in cases.items():
        with pytest.raises(PayloadUnreadable, match=expected) as caught:
            await codec.decode([payload])
        assert "\n" not in str(caught.value)
        assert "passwd" not in str(caught.value)


async def test_payloads_written_in_clear_decode_unchanged() -> None:
    codec = EncryptionCodec(keys("p1", p1=OLD_KEY))
    (plain,) = await pydantic_data_converter.encode([recognisable_plan()])

    assert await codec.decode([plain]) == [plain]
    converter = encrypted_data_converter(keys("p1", p1=OLD_KEY))
    assert await converter.decode([plain], [LaunchPlan]) == [recognisable_plan()]


async def test_failure_messages_and_stack_traces_are_encrypted() -> None:
    converter = encrypted_data_converter(keys("p1", p1=OLD_KEY))
    try:
        raise ApplicationError("flag codec-test-flag-7b2e refused", type="RouterError")
    except ApplicationError as raised:
        error = raised
    failure = Failure()

    await converter.encode_failure(error, failure)

    assert FLAG_KEY.encode() not in failure.SerializeToString()
    assert failure.message == "Encoded failure"
    assert failure.encoded_attributes.metadata["encoding"] == ENCODING
    decoded = await converter.decode_failure(failure)
    assert isinstance(decoded, ApplicationError)
    assert decoded.message == "flag codec-test-flag-7b2e refused"
    assert decoded.type == "RouterError"


def test_settings_choose_the_converter(payload_keys_file: Path) -> None:
    in_clear = data_converter_for(Settings(payload_keys=None))
    assert isinstance(in_clear.payload_codec, WithoutPayloadKeys)
    assert in_clear.failure_converter_class is pydantic_data_converter.failure_converter_class

    converter = data_converter_for(Settings(payload_keys=payload_keys_file))

    assert isinstance(converter, DataConverter)
    assert isinstance(converter.payload_codec, EncryptionCodec)
    assert converter.payload_codec.key_ids == ["test-payloads-1"]
    assert converter.failure_converter_class is DefaultFailureConverterWithEncodedAttributes
    assert converter.payload_converter_class is pydantic_data_converter.payload_converter_class


def test_the_environment_names_the_key_file(
    payload_keys_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PHASEGATE_PAYLOAD_KEYS", str(payload_keys_file))
    assert Settings().payload_keys == payload_keys_file


def test_a_key_file_loads_with_its_current_key(tmp_path: Path) -> None:
    path = write_key_file(tmp_path / "keys.json", "p2", {"p1": OLD_KEY, "p2": NEW_KEY})

    loaded = load_payload_keys(path)

    assert loaded.current == "p2"
    assert dict(loaded.keys) == {"p1": OLD_KEY, "p2": NEW_KEY}
    assert base64.b64encode(OLD_KEY).decode() not in repr(loaded)


def test_a_key_file_others_may_read_is_refused(tmp_path: Path) -> None:
    path = write_key_file(tmp_path / "keys.json", "p1", {"p1": OLD_KEY})
    os.chmod(path, 0o644)

    with pytest.raises(PayloadKeysError) as caught:
        load_payload_keys(path)

    assert str(caught.value) == (
        f"payload key file {path} may be read or written by group or others (mode 0644): "
        f"run chmod 600 {path}"
    )


def test_a_fifo_in_place_of_the_key_file_is_refused_at_once(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    os.mkfifo(path, 0o600)

    with pytest.raises(PayloadKeysError) as caught:
        load_payload_keys(path)

    assert str(caught.value) == f"payload key file {path}: is not a regular file"


def test_a_missing_key_file_says_which_setting_names_it(tmp_path: Path) -> None:
    with pytest.raises(PayloadKeysError) as caught:
        load_payload_keys(tmp_path / "absent.keys")

    assert str(caught.value) == (
        f"payload key file {tmp_path / 'absent.keys'}: cannot read: No such file or directory "
        "(the payload key file (PHASEGATE_PAYLOAD_KEYS))"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("current: p1\nkeys:\n  p1: not-base64!\n", "keys.p1: must be the base64 of 32"),
        (
            f"current: p1\nkeys:\n  p1: {base64.b64encode(b'sixteen-bytes-xx').decode()}\n",
            "it decodes to 16 bytes",
        ),
        (
            f"current: p9\nkeys:\n  p1: {base64.b64encode(OLD_KEY).decode()}\n",
            "current: names key 'p9', which is not under keys",
        ),
        (
            f"current: p1\nkeys:\n  {base64.b64encode(OLD_KEY).decode()}: p1\n",
            "key id number 1 does not match",
        ),
        ("current: p1\nkeys: [\n", "payload key file"),
        ("- just\n- a list\n", "must be a mapping with current, keys"),
    ],
)
def test_a_malformed_key_file_is_one_line_without_key_material(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = write_private(tmp_path / "keys.yaml", text)

    with pytest.raises(PayloadKeysError) as caught:
        load_payload_keys(path)

    message = str(caught.value)
    assert message.startswith(f"payload key file {path}: ")
    assert expected in message
    assert "\n" not in message
    assert base64.b64encode(OLD_KEY).decode() not in message


async def test_without_keys_payloads_go_out_in_clear_and_encrypted_ones_are_one_line() -> None:
    in_clear = data_converter_for(Settings(payload_keys=None))
    encrypted = encrypted_data_converter(keys("p1", p1=OLD_KEY))

    (plain,) = await in_clear.encode([recognisable_plan()])
    assert plain.metadata["encoding"] == b"json/plain"
    assert await in_clear.decode([plain], [LaunchPlan]) == [recognisable_plan()]
    (sealed,) = await encrypted.encode([recognisable_plan()])
    with pytest.raises(PayloadUnreadable) as caught:
        await in_clear.decode([sealed], [LaunchPlan])

    assert str(caught.value) == (
        "a payload is encrypted (payload key 'p1') and no payload keys are set: point "
        "PHASEGATE_PAYLOAD_KEYS at the deployment's payload key file"
    )


def test_a_plan_never_reads_the_payload_keys_as_a_secret(payload_keys_file: Path) -> None:
    settings = Settings(payload_keys=payload_keys_file, worker_limits=None)
    limits = load_worker_limits(settings).model_copy(
        update={"secrets": SecretLimits(files=[str(payload_keys_file.parent)])}
    )

    problem = limits.secret_problem(SecretRef(file=str(payload_keys_file)))

    assert problem == (
        f"file {payload_keys_file} is the worker's own configuration, never a plan's secret"
    )


async def test_the_history_check_sees_clear_payloads_and_values(
    encrypted_converter: DataConverter,
) -> None:
    """`clear_text_in`, which the end-to-end tests trust, fails a history stored in clear."""

    def started_with(payloads: list[Payload]) -> WorkflowHistory:
        event = HistoryEvent(event_id=1)
        event.workflow_execution_started_event_attributes.input.payloads.extend(payloads)
        return WorkflowHistory("wf", [event])

    values = [{"approver": "approver-kudu-3", "flag": "kudu-flag"}]
    plain = pydantic_data_converter.payload_converter.to_payloads(values)
    assert clear_text_in(started_with(plain), ["approver-kudu-3", "kudu-flag"]) == [
        "a payload in input is not encrypted",
        "'approver-kudu-3' in clear",
        "'kudu-flag' in clear",
    ]
    sealed = await encrypted_converter.encode(values)
    assert clear_text_in(started_with(sealed), ["approver-kudu-3", "kudu-flag"]) == []


def test_the_history_check_lets_only_the_sdks_own_marker_records_pass() -> None:
    """A local activity's and a patch's marker carry the SDK's record of them outside the codec:
    names, counters and times pass; any other key there (a result hidden in it) is clear text."""

    def marker(field: str, record: dict[str, object]) -> WorkflowHistory:
        event = HistoryEvent(event_id=1, event_type=EventType.EVENT_TYPE_MARKER_RECORDED)
        details = event.marker_recorded_event_attributes.details[field]
        details.payloads.append(
            Payload(metadata={"encoding": b"json/plain"}, data=json.dumps(record).encode())
        )
        return WorkflowHistory("wf", [event])

    ran = {"seq": 1, "attempt": 1, "activity_id": "1", "activity_type": "set_exposure"}
    assert clear_text_in(marker("data", ran), []) == []
    assert clear_text_in(marker("patch-data", {"id": "p", "deprecated": False}), []) == []
    assert clear_text_in(marker("data", {**ran, "result": "kudu-flag"}), ["kudu-flag"]) == [
        "a payload in details[data] is not encrypted",
        "'kudu-flag' in clear",
    ]
    assert clear_text_in(marker("result", ran), []) == [
        "a payload in details[result] is not encrypted"
    ]
