"""Encrypted backups at rest, with real pg_dump/pg_restore against a real PostgreSQL: what is
written is unreadable without the key, 0600, and read back only when every byte is intact."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import stat
import subprocess
import sys
import tracemalloc
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from activities import backup_store
from activities.backup_store import (
    CHUNK_SIZE,
    MAGIC,
    BackupKeys,
    EncryptingWriter,
    ToolFailed,
    backup_path,
    decrypt_chunks,
    decrypt_to_process,
    encrypt_from_process,
    generate_key_file,
    in_use,
    load_backup_keys,
    prune_backups,
    read_encrypted_lines,
    sidecar_of,
    verify_backup,
    write_encrypted_bytes,
)
from activities.errors import ConfigurationError, MigrationError
from devstack.postgres_cluster import PostgresCluster
from tests.support.postgres import CheckoutDatabase

DAMAGED = "is damaged or was written with another key"
SMALL_CHUNK = 4096


# --- helpers ---------------------------------------------------------------------------


def write_keys(path: Path, current: str, keys: dict[str, bytes], *, mode: int = 0o600) -> Path:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as out:
        json.dump(
            {
                "current": current,
                "keys": {k: base64.b64encode(v).decode() for k, v in keys.items()},
            },
            out,
        )
    os.chmod(path, mode)
    return path


def spans(path: Path) -> tuple[int, list[tuple[int, int]]]:
    """Where the header ends, and each chunk's (start, end) in the file."""
    data = path.read_bytes()
    header_end = data.index(b"\n", len(MAGIC)) + 1
    found, position = [], header_end
    while position < len(data):
        length = int.from_bytes(data[position : position + 4], "big")
        end = position + 4 + 12 + length
        found.append((position, end))
        position = end
    return header_end, found


def plaintext(path: Path, keys: BackupKeys | None = None) -> bytes:
    return b"".join(decrypt_chunks(path, keys))


def several_chunks(path: Path, keys: BackupKeys | None = None) -> bytes:
    """A file of 4 small chunks (the last one short); its plaintext."""
    data = os.urandom(SMALL_CHUNK * 3 + 100)
    with EncryptingWriter(path, keys, chunk_size=SMALL_CHUNK) as writer:
        writer.write(data)
    return data


@contextlib.contextmanager
def umask(value: int) -> Iterator[None]:
    previous = os.umask(value)
    try:
        yield
    finally:
        os.umask(previous)


def pg_env() -> dict[str, str]:
    return {**os.environ, "PGCONNECT_TIMEOUT": "10"}


def dump_argv(postgres: PostgresCluster, dsn: str, *extra: str) -> list[str]:
    return [str(postgres.bin_dir / "pg_dump"), "-Fc", "--verbose", *extra, f"--dbname={dsn}"]


def pg_restore(postgres: PostgresCluster) -> str:
    return str(postgres.bin_dir / "pg_restore")


def table_count(dsn: str) -> int:
    return int(
        CheckoutDatabase(dsn=dsn, dsn_file=Path(), workdir=Path()).scalar(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        )
    )


# --- a real pg_dump, encrypted, verified, restored -------------------------------------


def test_pg_dump_round_trip_through_encryption_verify_and_restore(
    checkout_db: CheckoutDatabase, postgres: PostgresCluster, tmp_path: Path
) -> None:
    dest = backup_path(tmp_path / "backups", "launch-1.migrate")
    progress: list[str] = []
    counted: list[int] = []

    written = encrypt_from_process(
        dump_argv(postgres, checkout_db.dsn),
        pg_env(),
        dest,
        progress.append,
        on_bytes=counted.append,
    )

    raw = dest.read_bytes()
    assert raw.startswith(MAGIC)
    assert written.path == dest
    assert written.size_bytes == len(raw)
    assert written.sha256 == hashlib.sha256(raw).hexdigest()
    assert written.kid == in_use().current
    assert written.plaintext_bytes == counted[-1] > 0
    assert any("dumping contents of table" in line and "orders" in line for line in progress)
    assert not dest.with_name(dest.name + ".partial").exists()

    # The decrypted archive lists exactly what pg_restore lists from it as a plain file.
    archive = tmp_path / "plain.dump"
    archive.write_bytes(plaintext(dest))
    assert len(archive.read_bytes()) == written.plaintext_bytes
    listing = subprocess.run(
        [pg_restore(postgres), "--list", str(archive)], capture_output=True, text=True, check=True
    ).stdout
    expected = sum(1 for line in listing.splitlines() if line.strip() and not line.startswith(";"))
    assert verify_backup(dest, pg_restore(postgres)) == expected
    assert expected >= 3
    listed = decrypt_to_process(dest, [pg_restore(postgres), "--list"], None, lambda _: None)
    assert "TABLE public orders" in listed

    # Restored from stdin into a fresh database, it holds the same rows.
    restored_dsn = postgres.create_database(f"restored_{uuid.uuid4().hex[:8]}")
    restore_progress: list[str] = []
    out = decrypt_to_process(
        dest,
        [
            pg_restore(postgres),
            "--verbose",
            "--exit-on-error",
            "--single-transaction",
            f"--dbname={restored_dsn}",
        ],
        pg_env(),
        restore_progress.append,
    )
    assert out == ""
    assert any("processing data for table" in line for line in restore_progress)
    restored = CheckoutDatabase(dsn=restored_dsn, dsn_file=Path(), workdir=tmp_path)
    assert restored.contents() == checkout_db.contents()
    assert restored.scalar("SELECT count(*) FROM orders") == 30_000


def test_no_row_value_appears_in_the_encrypted_backup(
    checkout_db: CheckoutDatabase, postgres: PostgresCluster, tmp_path: Path
) -> None:
    marker = f"MARKER-{uuid.uuid4().hex}"
    checkout_db.query("UPDATE orders SET status = %s WHERE id = 17", (marker,))
    dest = tmp_path / "b.dump.pgbk"
    # Uncompressed, so the archive itself holds the marker in plain text.
    encrypt_from_process(
        dump_argv(postgres, checkout_db.dsn, "--compress=0"), pg_env(), dest, lambda _: None
    )

    assert marker.encode() in plaintext(dest)
    assert marker.encode() not in dest.read_bytes()
    assert b"orders" not in dest.read_bytes()
    assert len(spans(dest)[1]) >= 2  # 30,000 rows uncompressed span more than one chunk


def test_a_damaged_archive_kills_pg_restore_before_its_transaction_commits(
    checkout_db: CheckoutDatabase, postgres: PostgresCluster, tmp_path: Path
) -> None:
    dest = tmp_path / "b.dump.pgbk"
    encrypt_from_process(
        dump_argv(postgres, checkout_db.dsn, "--compress=0"), pg_env(), dest, lambda _: None
    )
    _, chunks = spans(dest)
    assert len(chunks) >= 2
    data = bytearray(dest.read_bytes())
    data[chunks[-1][1] - 1] ^= 0x01  # the final chunk's tag: everything before it is fed
    dest.write_bytes(bytes(data))
    restored_dsn = postgres.create_database(f"restored_{uuid.uuid4().hex[:8]}")

    with pytest.raises(MigrationError, match=DAMAGED) as caught:
        decrypt_to_process(
            dest,
            [
                pg_restore(postgres),
                "--exit-on-error",
                "--single-transaction",
                f"--dbname={restored_dsn}",
            ],
            pg_env(),
            lambda _: None,
        )

    assert str(dest) in str(caught.value)
    assert f"chunk {len(chunks) - 1} does not authenticate" in str(caught.value)
    assert table_count(restored_dsn) == 0


def test_a_failing_dump_leaves_no_file_and_says_why(
    postgres: PostgresCluster, tmp_path: Path
) -> None:
    dest = tmp_path / "b.dump.pgbk"
    missing = postgres.dsn(f"absent_{uuid.uuid4().hex[:8]}")
    lines: list[str] = []

    with pytest.raises(ToolFailed) as caught:
        encrypt_from_process(dump_argv(postgres, missing), pg_env(), dest, lines.append)

    assert caught.value.tool == "pg_dump"
    assert caught.value.returncode != 0
    assert "does not exist" in str(caught.value)
    assert any("does not exist" in line for line in lines)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_failing_restore_reports_its_stderr(postgres: PostgresCluster, tmp_path: Path) -> None:
    dest = tmp_path / "junk.dump.pgbk"
    write_encrypted_bytes(dest, [b"this is not an archive\n"])

    with pytest.raises(ToolFailed, match="pg_restore failed"):
        decrypt_to_process(dest, [pg_restore(postgres), "--list"], None, lambda _: None)
    with pytest.raises(MigrationError, match=f"backup {dest} is not restorable"):
        verify_backup(dest, pg_restore(postgres))


# --- the file -------------------------------------------------------------------------


def test_files_are_0600_and_new_folders_0700_whatever_the_umask(tmp_path: Path) -> None:
    folder = tmp_path / "shared" / "backups"
    with umask(0):
        written = write_encrypted_bytes(folder / "rows.jsonl.pgbk", [b'{"id": 1}\n'])
        processed = encrypt_from_process(
            [sys.executable, "-c", "import sys; sys.stdout.write('x' * 5000)"],
            None,
            folder / "p.dump.pgbk",
            lambda _: None,
        )

    for path in (written.path, processed.path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for made in (folder, folder.parent):
        assert stat.S_IMODE(made.stat().st_mode) == 0o700
    assert plaintext(processed.path) == b"x" * 5000


def test_an_existing_folder_keeps_its_mode(tmp_path: Path) -> None:
    folder = tmp_path / "team"
    folder.mkdir(mode=0o750)
    os.chmod(folder, 0o750)
    write_encrypted_bytes(folder / "a.pgbk", [b"x"])
    assert stat.S_IMODE(folder.stat().st_mode) == 0o750


def test_plaintext_round_trips_at_chunk_boundaries(tmp_path: Path) -> None:
    for size in (0, 1, SMALL_CHUNK - 1, SMALL_CHUNK, SMALL_CHUNK + 1, 3 * SMALL_CHUNK):
        data = os.urandom(size)
        dest = tmp_path / f"{size}.pgbk"
        with EncryptingWriter(dest, chunk_size=SMALL_CHUNK) as writer:
            for start in range(0, size, 1000):
                writer.write(data[start : start + 1000])
        assert plaintext(dest) == data
        assert len(spans(dest)[1]) == max(1, -(-size // SMALL_CHUNK))


def test_the_default_chunk_is_one_mebibyte(tmp_path: Path) -> None:
    dest = write_encrypted_bytes(tmp_path / "big.pgbk", [b"a" * (CHUNK_SIZE + 10)]).path
    header = json.loads(dest.read_bytes()[len(MAGIC) : spans(dest)[0]])
    assert header["chunk_size"] == CHUNK_SIZE == 1024 * 1024
    assert header["kid"] == in_use().current
    assert [end - start for start, end in spans(dest)[1]] == [4 + 12 + CHUNK_SIZE + 16, 4 + 12 + 26]


def test_saved_rows_read_back_as_lines(tmp_path: Path) -> None:
    rows = [
        json.dumps({"table": "orders", "op": "INSERT", "id": n}).encode() + b"\n"
        for n in range(3000)
    ]
    dest = tmp_path / "at-risk.jsonl.pgbk"
    write_encrypted_bytes(dest, rows)
    assert list(read_encrypted_lines(dest)) == rows
    assert b"INSERT" not in dest.read_bytes()


def test_a_partial_left_by_a_dead_writer_is_replaced(tmp_path: Path) -> None:
    dest = tmp_path / "b.dump.pgbk"
    dest.with_name(dest.name + ".partial").write_bytes(b"half a backup")
    write_encrypted_bytes(dest, [b"whole"])
    assert plaintext(dest) == b"whole"
    assert not dest.with_name(dest.name + ".partial").exists()


def test_an_aborted_writer_leaves_nothing(tmp_path: Path) -> None:
    dest = tmp_path / "b.dump.pgbk"
    partial_seen: list[bool] = []

    def write_then_fail() -> None:
        with EncryptingWriter(dest) as writer:
            writer.write(b"x" * 10_000)
            partial_seen.append(writer.partial.exists())
            raise RuntimeError("stopped")

    with pytest.raises(RuntimeError, match="stopped"):
        write_then_fail()
    assert partial_seen == [True]
    assert list(tmp_path.iterdir()) == []


# --- damage ------------------------------------------------------------------------------


def test_one_changed_byte_anywhere_is_refused(tmp_path: Path) -> None:
    original = tmp_path / "b.dump.pgbk"
    several_chunks(original)
    header_end, chunks = spans(original)
    places = {
        "header": (header_end - 5, "chunk 0 does not authenticate"),
        "nonce": (chunks[1][0] + 6, "chunk 1 does not authenticate"),
        "ciphertext": (chunks[2][0] + 100, "chunk 2 does not authenticate"),
        "last tag": (chunks[3][1] - 1, "chunk 3 does not authenticate"),
    }
    for where, (offset, why) in places.items():
        damaged = tmp_path / f"{where}.pgbk"
        data = bytearray(original.read_bytes())
        data[offset] ^= 0x40
        damaged.write_bytes(bytes(data))
        with pytest.raises(MigrationError) as caught:
            plaintext(damaged)
        assert f"backup {damaged} {DAMAGED}" in str(caught.value), where
        assert why in str(caught.value), where


def test_a_file_cut_before_its_last_chunk_is_refused(tmp_path: Path) -> None:
    dest = tmp_path / "b.dump.pgbk"
    data = several_chunks(dest)
    _, chunks = spans(dest)
    dest.write_bytes(dest.read_bytes()[: chunks[-1][0]])

    given: list[bytes] = []

    def read_all() -> None:
        given.extend(decrypt_chunks(dest))

    with pytest.raises(MigrationError, match=DAMAGED) as caught:
        read_all()
    assert "it ends before its last chunk, after 3 chunk(s)" in str(caught.value)
    assert b"".join(given) == data[: 2 * SMALL_CHUNK]  # never the unconfirmed third chunk


def test_a_file_cut_inside_a_chunk_or_after_its_header_is_refused(tmp_path: Path) -> None:
    dest = tmp_path / "b.dump.pgbk"
    several_chunks(dest)
    header_end, chunks = spans(dest)
    whole = dest.read_bytes()
    for cut, why in ((chunks[1][0] + 50, "it ends inside chunk 1"), (header_end, "after 0")):
        dest.write_bytes(whole[:cut])
        with pytest.raises(MigrationError, match=DAMAGED) as caught:
            plaintext(dest)
        assert why in str(caught.value)


def test_swapped_dropped_or_added_chunks_are_refused(tmp_path: Path) -> None:
    dest = tmp_path / "b.dump.pgbk"
    several_chunks(dest)
    header_end, chunks = spans(dest)
    whole = dest.read_bytes()
    parts = [whole[start:end] for start, end in chunks]
    header = whole[:header_end]
    variants = {
        "swapped": header + parts[1] + parts[0] + parts[2] + parts[3],
        "dropped": header + parts[0] + parts[2] + parts[3],
        "repeated": header + parts[0] + parts[0] + parts[1] + parts[2] + parts[3],
        "after the end": whole + parts[1],
    }
    refused = []
    for name, data in variants.items():
        dest.write_bytes(data)
        with pytest.raises(MigrationError, match=DAMAGED):
            plaintext(dest)
        refused.append(name)
    assert refused == list(variants)


def test_a_file_from_another_deployment_is_refused(tmp_path: Path) -> None:
    """Same key id, other key material: the first chunk does not authenticate."""
    dest = tmp_path / "b.dump.pgbk"
    write_encrypted_bytes(dest, [b"rows"])
    other = BackupKeys(current=in_use().current, keys={in_use().current: os.urandom(32)})
    with pytest.raises(MigrationError, match=f"{DAMAGED} \\(chunk 0 does not authenticate\\)"):
        plaintext(dest, other)


def test_a_backup_missing_on_this_worker_names_the_shared_folder(tmp_path: Path) -> None:
    with pytest.raises(MigrationError, match="is not on this worker: the plan's backup_dir"):
        plaintext(tmp_path / "elsewhere.dump.pgbk")


def test_an_unencrypted_dump_is_named_as_such(tmp_path: Path) -> None:
    dest = tmp_path / "old.dump"
    dest.write_bytes(b"PGDMP\x01\x0e\x00 an old plain archive")
    with pytest.raises(MigrationError, match="not an encrypted Phasegate backup"):
        plaintext(dest)


# --- keys ------------------------------------------------------------------------------


def test_a_rotated_key_file_still_reads_old_backups(tmp_path: Path) -> None:
    k1, k2 = os.urandom(32), os.urandom(32)
    first = load_backup_keys(write_keys(tmp_path / "1.keys", "k1", {"k1": k1}))
    old = tmp_path / "old.dump.pgbk"
    write_encrypted_bytes(old, [b"written under k1"], first)

    rotated = load_backup_keys(write_keys(tmp_path / "2.keys", "k2", {"k1": k1, "k2": k2}))
    new = tmp_path / "new.dump.pgbk"
    assert write_encrypted_bytes(new, [b"written under k2"], rotated).kid == "k2"

    assert plaintext(old, rotated) == b"written under k1"
    assert plaintext(new, rotated) == b"written under k2"
    assert json.loads(new.read_bytes()[len(MAGIC) : spans(new)[0]])["kid"] == "k2"


def test_a_backup_whose_key_is_gone_names_the_key(
    postgres: PostgresCluster, tmp_path: Path
) -> None:
    old = tmp_path / "old.dump.pgbk"
    write_encrypted_bytes(old, [b"x"], BackupKeys(current="k0", keys={"k0": os.urandom(32)}))
    keys_file = write_keys(tmp_path / "w.keys", "k5", {"k5": os.urandom(32)})
    keys = load_backup_keys(keys_file)

    with pytest.raises(MigrationError) as caught:
        plaintext(old, keys)
    assert "backup key 'k0'" in str(caught.value)
    assert str(keys_file) in str(caught.value)
    assert "add key 'k0' back under keys" in str(caught.value)
    # Refused before pg_restore starts.
    with pytest.raises(MigrationError, match="backup key 'k0'"):
        decrypt_to_process(old, [pg_restore(postgres), "--list"], None, lambda _: None, keys=keys)


def test_a_key_file_others_may_read_is_refused(tmp_path: Path) -> None:
    path = write_keys(tmp_path / "w.keys", "k1", {"k1": os.urandom(32)}, mode=0o644)
    with pytest.raises(ConfigurationError, match=r"\(mode 0644\): run chmod 600 "):
        load_backup_keys(path)
    os.chmod(path, 0o640)
    with pytest.raises(ConfigurationError, match="group or others"):
        load_backup_keys(path)
    os.chmod(path, 0o400)
    assert load_backup_keys(path).current == "k1"


@pytest.mark.parametrize(
    ("material", "why"),
    [
        ("not base64 at all!!", "is not base64"),
        (base64.b64encode(b"s" * 16).decode(), "decodes to 16 bytes"),
        (base64.b64encode(b"l" * 33).decode(), "decodes to 33 bytes"),
    ],
)
def test_bad_key_material_is_named_by_field_never_shown(
    tmp_path: Path, material: str, why: str
) -> None:
    path = tmp_path / "w.keys"
    path.write_text(f"current: k1\nkeys:\n  k1: {json.dumps(material)}\n")
    os.chmod(path, 0o600)
    with pytest.raises(ConfigurationError) as caught:
        load_backup_keys(path)
    message = str(caught.value)
    assert message.startswith(f"backup key file {path}: keys.k1: must be the base64 of 32")
    assert why in message
    assert material not in message
    assert "\n" not in message


def test_key_file_problems_name_their_field(tmp_path: Path) -> None:
    good = base64.b64encode(os.urandom(32)).decode()
    cases = {
        f"keys: {{k1: {good}}}\n": "current: is required",
        f"current: k2\nkeys: {{k1: {good}}}\n": "current: names key 'k2', which is not under keys",
        "current: k1\nkeys: {}\n": "keys: must have at least 1 item",
        f"current: k1\nkeys: {{k1: {good}}}\nextra: 1\n": "extra: is not a known field",
        f"current: 'bad id!'\nkeys: {{k1: {good}}}\n": "current: must match",
        "": "must be a mapping with current, keys",
    }
    for text, expected in cases.items():
        path = tmp_path / "w.keys"
        path.write_text(text)
        os.chmod(path, 0o600)
        with pytest.raises(ConfigurationError) as caught:
            load_backup_keys(path)
        assert expected in str(caught.value), text
        assert good not in str(caught.value)


def test_key_material_written_as_a_key_id_is_not_shown(tmp_path: Path) -> None:
    material = base64.b64encode(os.urandom(32)).decode()
    path = tmp_path / "w.keys"
    path.write_text(f"current: k1\nkeys:\n  {json.dumps(material)}: k1\n")
    os.chmod(path, 0o600)
    with pytest.raises(ConfigurationError, match="key id number 1 does not match") as caught:
        load_backup_keys(path)
    assert material not in str(caught.value)


def test_generated_key_files_are_private_and_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "backup.keys"
    with umask(0):
        keys = generate_key_file(path, kid="demo-1")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert keys.current == "demo-1"
    assert len(keys.keys["demo-1"]) == 32
    assert "keys=" not in repr(keys)
    with pytest.raises(FileExistsError):
        generate_key_file(path)
    assert load_backup_keys(path).keys == keys.keys


def test_without_keys_nothing_is_written(tmp_path: Path) -> None:
    held = in_use()
    backup_store.configure(None)
    try:
        with pytest.raises(ConfigurationError, match="no backup keys: set PHASEGATE_BACKUP_KEYS"):
            write_encrypted_bytes(tmp_path / "a.pgbk", [b"x"])
    finally:
        backup_store.configure(held)
    assert list(tmp_path.iterdir()) == []


def test_a_worker_with_a_bad_key_file_stops_with_one_line(tmp_path: Path) -> None:
    path = write_keys(tmp_path / "w.keys", "k1", {"k1": os.urandom(32)}, mode=0o644)
    done = subprocess.run(
        [sys.executable, "-m", "workers.main"],
        env={**os.environ, "PHASEGATE_BACKUP_KEYS": str(path), "TEMPORAL_ADDRESS": "127.0.0.1:9"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"phasegate-worker: backup key file {path} may be read or written by group or others "
        f"(mode 0644): run chmod 600 {path}"
    ]


# --- retention ---------------------------------------------------------------------------


def test_prune_removes_only_old_backups_and_their_sidecars(tmp_path: Path) -> None:
    now = datetime(2026, 3, 1, tzinfo=UTC)
    old = (now - timedelta(days=31)).timestamp()
    recent = (now - timedelta(days=29)).timestamp()
    folder = tmp_path / "backups"
    folder.mkdir()
    files = {
        "l1.migrate.dump.pgbk": old,
        "l1.migrate.json": recent,  # a sidecar goes with its backup whatever its own age
        "l2.migrate.dump.pgbk": recent,
        "l2.migrate.json": old,
        "l3.migrate.dump.pgbk": old,  # no sidecar
        "l1.migrate.writes.jsonl.pgbk": old,
        "l4.migrate.dump.pgbk.partial": old,
        "l5.migrate.json": old,  # a sidecar without a backup
        "notes.txt": old,
        ".dump.pgbk": old,
    }
    for name, mtime in files.items():
        (folder / name).write_bytes(b"x")
        os.utime(folder / name, (mtime, mtime))
    (folder / "nested").mkdir()
    (folder / "nested" / "l6.migrate.dump.pgbk").write_bytes(b"x")
    os.utime(folder / "nested" / "l6.migrate.dump.pgbk", (old, old))
    target = tmp_path / "elsewhere.dump"
    target.write_bytes(b"x")
    os.utime(target, (old, old))
    (folder / "link.dump.pgbk").symlink_to(target)

    removed = prune_backups(folder, 30, now)

    assert [p.name for p in removed] == [
        "l1.migrate.dump.pgbk",
        "l1.migrate.json",
        "l3.migrate.dump.pgbk",
    ]
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        set(files) - {p.name for p in removed} | {"nested", "link.dump.pgbk"}
    )
    assert target.exists()
    assert (folder / "nested" / "l6.migrate.dump.pgbk").exists()
    assert prune_backups(folder, 30, now) == []
    assert prune_backups(tmp_path / "missing", 30, now) == []
    assert sidecar_of(folder / "x.y.dump.pgbk") == folder / "x.y.json"


# --- streaming -------------------------------------------------------------------------

# Writes `size` bytes of a counting pattern to stdout, a MiB at a time.
PRODUCER = (
    "import sys\n"
    "size = int(sys.argv[1])\n"
    "block = bytes(range(256)) * 4096\n"
    "while size > 0:\n"
    "    sys.stdout.buffer.write(block[:size]); size -= len(block)\n"
)
# The sha256 and length of stdin, read 64 KiB at a time.
CONSUMER = (
    "import hashlib, sys\n"
    "h, n = hashlib.sha256(), 0\n"
    "for block in iter(lambda: sys.stdin.buffer.read(65536), b''):\n"
    "    h.update(block); n += len(block)\n"
    "print(h.hexdigest(), n)\n"
)


def test_large_streams_pass_through_with_bounded_memory(tmp_path: Path) -> None:
    size = 48 * 1024 * 1024 + 123
    dest = tmp_path / "big.dump.pgbk"
    block = bytes(range(256)) * 4096
    expected = hashlib.sha256()
    for start in range(0, size, len(block)):
        expected.update(block[: size - start])

    tracemalloc.start()
    try:
        written = encrypt_from_process(
            [sys.executable, "-c", PRODUCER, str(size)], None, dest, lambda _: None
        )
        _, encrypt_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        out = decrypt_to_process(dest, [sys.executable, "-c", CONSUMER], None, lambda _: None)
        _, decrypt_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert written.plaintext_bytes == size
    assert out.split() == [expected.hexdigest(), str(size)]
    assert encrypt_peak < 8 * 1024 * 1024
    assert decrypt_peak < 8 * 1024 * 1024


def test_stderr_lines_reach_on_progress_while_the_process_runs(tmp_path: Path) -> None:
    """The process waits for a file that only `on_progress` makes, on seeing its first line."""
    flag = tmp_path / "seen"
    script = (
        "import os, sys, time\n"
        "print('pg_dump: reading schemas', file=sys.stderr, flush=True)\n"
        "deadline = time.monotonic() + 60\n"
        "while not os.path.exists(sys.argv[1]):\n"
        "    if time.monotonic() > deadline: sys.exit('never heard back')\n"
        "    time.sleep(0.01)\n"
        "sys.stdout.write('archive')\n"
        "print('pg_dump: done', file=sys.stderr)\n"
    )
    lines: list[str] = []

    def on_progress(line: str) -> None:
        lines.append(line)
        flag.touch()

    dest = tmp_path / "b.dump.pgbk"
    encrypt_from_process([sys.executable, "-c", script, str(flag)], None, dest, on_progress)

    assert lines == ["pg_dump: reading schemas", "pg_dump: done"]
    assert plaintext(dest) == b"archive"
