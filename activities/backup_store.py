"""Backups at rest: `pg_dump -Fc` archives and saved rows, encrypted with the worker's backup
keys (AES-256-GCM, chunked), written 0600 atomically, read back only if every byte is intact.

The key file (`PHASEGATE_BACKUP_KEYS`, mode 0600, JSON or YAML) names the key that writes and
every key that still reads; every worker of a deployment holds the same file, so a backup one
worker wrote is restored by any other. To rotate, add a key and make it `current`; keep the old
one while backups written with it are kept.

    {"current": "k2", "keys": {"k1": "<base64 of 32 random bytes>", "k2": "..."}}

An encrypted file is:

    PGBK1\\n                                       magic
    {"kid": "k2", "chunk_size": 1048576, "created": "2025-01-01T00:00:00+00:00"}\\n
    chunk*: length (4 bytes, big-endian) | nonce (12 bytes) | ciphertext (length bytes)

The header is the magic and the JSON line, as written. Each chunk holds at most `chunk_size`
plaintext bytes; its ciphertext is AES-256-GCM (the 16-byte tag at its end) under a fresh
random nonce, with the additional data `header | chunk index (8 bytes, big-endian) | final
(1 byte: 1 on the last chunk, else 0)`. A changed byte, a chunk moved, dropped or added, a
file cut short or carried on after its last chunk all fail to authenticate; an empty
plaintext is one final chunk of nothing. Plaintext is handed on only once its chunk has
authenticated, and the whole file has only once the final chunk has.
"""

from __future__ import annotations

import base64
import binascii
import collections
import contextlib
import hashlib
import json
import os
import re
import secrets
import selectors
import stat
import subprocess
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import IO, Annotated, Any, ClassVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import AfterValidator, Field, model_validator

from activities.errors import ConfigurationError, MigrationError
from schemas.basics import StrictModel
from schemas.problems import PlanError, parse_document

MAGIC = b"PGBK1\n"
CHUNK_SIZE = 1024 * 1024
# A header names its own chunk size; a reader holds at most one chunk, so it is bounded.
MAX_CHUNK_SIZE = 16 * 1024 * 1024
MAX_HEADER_BYTES = 1024
KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
KID_PATTERN = r"^[A-Za-z0-9_-]{1,32}$"
_KID = re.compile(r"[A-Za-z0-9_-]{1,32}")
MAX_KEYS = 64
MAX_KEY_FILE_BYTES = 64 * 1024

# `<name>.dump.pgbk` is a backup; `<name>.json` beside it is its record (the sidecar).
BACKUP_SUFFIX = ".dump.pgbk"
SIDECAR_SUFFIX = ".json"
PARTIAL_SUFFIX = ".partial"

# How a missing or refused key file points at the fix.
WHERE = "the worker's backup key file (PHASEGATE_BACKUP_KEYS)"

# Reading a process's output, and how often a wait returns to Python (a cancelled
# activity's exception lands there).
READ_BYTES = 256 * 1024
POLL_S = 1.0
# A process's output collected as text (a `pg_restore --list`); more must go to a sink.
MAX_STDOUT_BYTES = 64 * 1024 * 1024
STDERR_TAIL_LINES = 20
MAX_LINE_CHARS = 2000


# --- keys ------------------------------------------------------------------------------


def _key_material(value: str) -> str:
    """The base64 of exactly 32 bytes; the messages never repeat the value."""
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(
            f"must be the base64 of {KEY_BYTES} random bytes (it is not base64)"
        ) from None
    if len(raw) != KEY_BYTES:
        raise ValueError(
            f"must be the base64 of {KEY_BYTES} random bytes (it decodes to {len(raw)} bytes)"
        )
    return value


KeyId = Annotated[str, Field(pattern=KID_PATTERN)]
KeyText = Annotated[str, Field(max_length=256), AfterValidator(_key_material)]


class BackupKeyFile(StrictModel):
    """The key file as written; `load_backup_keys` turns it into `BackupKeys`."""

    current: KeyId
    keys: dict[KeyId, KeyText] = Field(min_length=1, max_length=MAX_KEYS)

    @model_validator(mode="before")
    @classmethod
    def _key_ids_first(cls, data: Any) -> Any:
        # Checked before the values, whose problems are named by key id: a file that swapped
        # ids and keys must not have its key material quoted as the place of a problem.
        keys = data.get("keys") if isinstance(data, dict) else None
        if isinstance(keys, dict):
            for position, kid in enumerate(keys, start=1):
                if not isinstance(kid, str) or not _KID.fullmatch(kid):
                    raise ValueError(
                        f"keys: key id number {position} does not match {KID_PATTERN} (not "
                        "shown: it may be key material; write key ids as names, keys as values)"
                    )
        return data

    @model_validator(mode="after")
    def _current_is_held(self) -> BackupKeyFile:
        if self.current not in self.keys:
            raise ValueError(
                f"current: names key {self.current!r}, which is not under keys "
                f"(keys holds {', '.join(sorted(self.keys))})"
            )
        return self


@dataclass(frozen=True)
class KeyRing:
    """The key that encrypts (`current`) and every key that decrypts, by key id, as a key file
    holds them (backup and payload keys alike). Its repr shows the key ids only."""

    # What the keys are for, in messages.
    kind: ClassVar[str] = "key"

    current: str
    keys: Mapping[str, bytes] = field(repr=False)
    source: str = ""

    def __post_init__(self) -> None:
        if self.current not in self.keys:
            raise ValueError(f"{self.kind} {self.current!r} is current but not among the keys")
        for kid, key in self.keys.items():
            if not _KID.fullmatch(kid) or len(key) != KEY_BYTES:
                raise ValueError(f"{self.kind} {kid!r}: a key id {KID_PATTERN} and 32 bytes")

    def key(self, kid: str) -> bytes | None:
        return self.keys.get(kid)


class BackupKeys(KeyRing):
    """The keys backups are encrypted with."""

    kind = "backup key"


def load_backup_keys(path: str | Path) -> BackupKeys:
    """The keys in `path`; a `ConfigurationError` of one line naming the file and each field
    that is wrong (never a key's value), and refusing a file others may read."""
    current, keys = read_key_file(Path(path), "backup key file", WHERE, ConfigurationError)
    return BackupKeys(current=current, keys=keys, source=str(path))


def read_private_file(
    path: Path, label: str, max_bytes: int, error: Callable[[str], Exception], where: str = ""
) -> bytes:
    """At most `max_bytes + 1` bytes of `path`, which must be a regular file only its owner
    may read or write; `error(line)` naming `label` and `path` otherwise. A FIFO in the file's
    place is refused at once, not waited on; a symlink is followed (Kubernetes mounts secrets
    as symlinks) and the file it names is checked."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as err:
        place = f" ({where})" if where else ""
        raise error(f"{label} {path}: cannot read: {err.strerror}{place}") from None
    with os.fdopen(descriptor, "rb") as handle:
        status = os.fstat(handle.fileno())
        if not stat.S_ISREG(status.st_mode):
            raise error(f"{label} {path}: is not a regular file")
        if status.st_mode & 0o077:
            raise error(
                f"{label} {path} may be read or written by group or others (mode "
                f"{stat.S_IMODE(status.st_mode):04o}): run chmod 600 {path}"
            )
        return handle.read(max_bytes + 1)


def read_key_file(
    path: Path, label: str, where: str, error: Callable[[str], Exception]
) -> tuple[str, dict[str, bytes]]:
    """The current key id and every key of a key file (`BackupKeyFile`: backup and payload
    keys alike); `error(line)` naming the file and each field that is wrong, never a key."""
    data = read_private_file(path, label, MAX_KEY_FILE_BYTES, error, where)
    if len(data) > MAX_KEY_FILE_BYTES:
        raise error(f"{label} {path}: larger than {MAX_KEY_FILE_BYTES // 1024} KiB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise error(f"{label} {path}: is not UTF-8 text") from None
    document = label.removesuffix(" key file") + " keys"  # "backup keys", "payload keys"
    try:
        parsed = parse_document(
            text, BackupKeyFile, source=str(path), document=document, fields="current, keys"
        )
    except PlanError as err:
        raise error(f"{label} {path}: {'; '.join(err.problems)}") from None
    keys = {kid: base64.b64decode(material.strip()) for kid, material in parsed.keys.items()}
    return parsed.current, keys


def generate_key_file(path: str | Path, kid: str = "k1") -> BackupKeys:
    """A new key file at `path` (mode 0600, never over an existing file) holding one fresh
    random key, `kid`, as current."""
    path = Path(path)
    if not _KID.fullmatch(kid):
        raise ValueError(f"key id {kid!r} must match {KID_PATTERN}")
    material = base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode("ascii")
    text = json.dumps({"current": kid, "keys": {kid: material}}, indent=2) + "\n"
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(descriptor, "w") as out:
        os.fchmod(out.fileno(), 0o600)
        out.write(text)
    return load_backup_keys(path)


_in_use: BackupKeys | None = None


def configure(keys: BackupKeys | None) -> None:
    """The keys backups are written and read with from now on in this process."""
    global _in_use
    _in_use = keys


def in_use() -> BackupKeys:
    if _in_use is None:
        raise ConfigurationError(
            "no backup keys: set PHASEGATE_BACKUP_KEYS to the worker's backup key file "
            '(mode 0600, {"current": "k1", "keys": {"k1": "<base64 of 32 random bytes>"}}, '
            "the same file on every worker) and restart the worker"
        )
    return _in_use


# --- files and folders -----------------------------------------------------------------


def ensure_folder(folder: Path) -> Path:
    """`folder`, with every missing part of it made mode 0700; an existing one is left as it is."""
    missing: list[Path] = []
    current = folder
    while not current.exists():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for part in reversed(missing):
        try:
            part.mkdir(mode=0o700)
        except FileExistsError:
            continue  # made by another writer in between: it decides its mode
        os.chmod(part, 0o700)  # the umask may have taken bits off
    return folder


def backup_path(folder: Path, name: str) -> Path:
    """Where the backup called `name` lives in `folder`: `<folder>/<name>.dump.pgbk`."""
    return folder / f"{name}{BACKUP_SUFFIX}"


def sidecar_of(backup: Path) -> Path:
    """The record kept beside a backup: `<name>.json` for `<name>.dump.pgbk`."""
    return backup.with_name(backup.name.removesuffix(BACKUP_SUFFIX) + SIDECAR_SUFFIX)


@dataclass(frozen=True)
class EncryptedFile:
    path: Path
    sha256: str  # of the file as written (ciphertext)
    size_bytes: int
    plaintext_bytes: int
    kid: str


class EncryptingWriter:
    """A write-only file that encrypts what it is given into `dest`: written to
    `<dest>.partial` (created 0600, never through an existing file), fsynced and renamed to
    `dest` by `close()`, removed by `abort()` or an error. As a context manager it closes on
    success and aborts on any exception."""

    def __init__(
        self,
        dest: Path,
        keys: BackupKeys | None = None,
        *,
        chunk_size: int = CHUNK_SIZE,
    ) -> None:
        if not 0 < chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError(f"chunk_size must be 1..{MAX_CHUNK_SIZE}")
        keys = keys or in_use()
        self.dest = Path(dest)
        self.partial = self.dest.with_name(self.dest.name + PARTIAL_SUFFIX)
        self._kid = keys.current
        self._aead = AESGCM(keys.keys[keys.current])
        self._chunk_size = chunk_size
        self._buffer = bytearray()
        self._index = 0
        self._hash = hashlib.sha256()
        self._size = 0
        self._plaintext = 0
        self._result: EncryptedFile | None = None
        self._closed = False
        ensure_folder(self.dest.parent)
        # A partial left by a writer that died: a link is removed, never followed.
        self.partial.unlink(missing_ok=True)
        descriptor = os.open(
            self.partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600
        )
        self._file: IO[bytes] = os.fdopen(descriptor, "wb")
        self._inode = os.fstat(descriptor).st_ino
        try:
            os.fchmod(descriptor, 0o600)
            created = datetime.now(UTC).isoformat(timespec="seconds")
            line = json.dumps({"kid": self._kid, "chunk_size": chunk_size, "created": created})
            self._header = MAGIC + line.encode("ascii") + b"\n"
            self._emit_raw(self._header)
        except BaseException:
            self.abort()
            raise

    @property
    def plaintext_bytes(self) -> int:
        return self._plaintext

    @property
    def result(self) -> EncryptedFile | None:
        """What `close()` wrote; None before."""
        return self._result

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._closed:
            raise ValueError(f"{self.dest}: written to after close")
        try:
            self._buffer += data
            self._plaintext += len(data)
            # The last chunk is written by close(): a full one only once more follows it.
            while len(self._buffer) > self._chunk_size:
                self._emit_chunk(bytes(self._buffer[: self._chunk_size]), final=False)
                del self._buffer[: self._chunk_size]
        except BaseException:
            self.abort()
            raise
        return len(data)

    def close(self) -> EncryptedFile:
        """Write the final chunk, fsync, and rename the partial to `dest` (then fsync its
        folder); the file's sha256 and sizes."""
        if self._result is not None:
            return self._result
        if self._closed:
            raise ValueError(f"{self.dest}: closed after it was aborted")
        try:
            self._emit_chunk(bytes(self._buffer), final=True)
            self._buffer.clear()
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._closed = True
            if os.lstat(self.partial).st_ino != self._inode:
                raise MigrationError(
                    f"{self.partial} was replaced by another writer while this one wrote it; "
                    "two attempts are writing the same backup"
                )
            os.replace(self.partial, self.dest)
            _fsync_folder(self.dest.parent)
        except BaseException:
            self.abort()
            raise
        self._result = EncryptedFile(
            path=self.dest,
            sha256=self._hash.hexdigest(),
            size_bytes=self._size,
            plaintext_bytes=self._plaintext,
            kid=self._kid,
        )
        return self._result

    def abort(self) -> None:
        """Stop and remove the partial file (only this writer's own)."""
        if self._result is not None:
            return
        self._closed = True
        self._buffer.clear()
        with contextlib.suppress(OSError):  # the partial goes whatever its last write did
            self._file.close()
        try:
            if os.lstat(self.partial).st_ino == self._inode:
                self.partial.unlink()
        except FileNotFoundError:
            pass

    def __enter__(self) -> EncryptingWriter:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()

    def _emit_chunk(self, plaintext: bytes, *, final: bool) -> None:
        nonce = os.urandom(NONCE_BYTES)
        ciphertext = self._aead.encrypt(nonce, plaintext, _aad(self._header, self._index, final))
        self._emit_raw(len(ciphertext).to_bytes(4, "big") + nonce + ciphertext)
        self._index += 1

    def _emit_raw(self, data: bytes) -> None:
        self._file.write(data)
        self._hash.update(data)
        self._size += len(data)


def _aad(header: bytes, index: int, final: bool) -> bytes:
    return header + index.to_bytes(8, "big") + (b"\x01" if final else b"\x00")


def _fsync_folder(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_encrypted_bytes(
    dest: Path, lines: Iterable[bytes], keys: BackupKeys | None = None
) -> EncryptedFile:
    """`lines` (each written as given: end JSON lines with a newline) encrypted into `dest`,
    atomically and 0600, in the backups' format."""
    with EncryptingWriter(dest, keys) as writer:
        for line in lines:
            writer.write(line)
    return writer.close()


# --- reading ---------------------------------------------------------------------------


def _damaged(src: Path, why: str) -> MigrationError:
    return MigrationError(f"backup {src} is damaged or was written with another key ({why})")


class _Decryption:
    """An open encrypted file whose header has been read and whose key is held."""

    def __init__(self, src: Path, keys: BackupKeys | None) -> None:
        keys = keys or in_use()
        self.src = src
        try:
            self._file = src.open("rb")
        except FileNotFoundError:
            raise MigrationError(
                f"backup {src} is not on this worker: the plan's backup_dir must be a folder "
                "every worker reaches (a shared path)"
            ) from None
        except OSError as err:
            raise MigrationError(f"backup {src} cannot be read: {err.strerror}") from None
        try:
            self._read_header(keys)
        except BaseException:
            self._file.close()
            raise

    def _read_header(self, keys: BackupKeys) -> None:
        src = self.src
        if self._file.read(len(MAGIC)) != MAGIC:
            raise MigrationError(
                f"backup {src} is not an encrypted Phasegate backup (it does not start with PGBK1)"
            )
        line = self._file.readline(MAX_HEADER_BYTES + 1)
        if not line.endswith(b"\n"):
            raise _damaged(src, "its header is cut short or too long")
        try:
            fields = json.loads(line)
        except ValueError:
            raise _damaged(src, "its header is not JSON") from None
        kid = fields.get("kid") if isinstance(fields, dict) else None
        size = fields.get("chunk_size") if isinstance(fields, dict) else None
        if not isinstance(kid, str) or not _KID.fullmatch(kid):
            raise _damaged(src, "its header names no valid key id")
        if not isinstance(size, int) or isinstance(size, bool) or not 0 < size <= MAX_CHUNK_SIZE:
            raise _damaged(src, "its header names no valid chunk size")
        key = keys.key(kid)
        if key is None:
            raise MigrationError(
                f"backup {src} was written with backup key {kid!r}, which {WHERE} "
                f"{keys.source or ''} does not hold (it holds {', '.join(sorted(keys.keys))}): "
                f"add key {kid!r} back under keys"
            )
        self.kid = kid
        self._header = MAGIC + line
        self._chunk_size = size
        self._aead = AESGCM(key)

    def chunks(self) -> Generator[bytes, None, None]:
        """Each chunk's plaintext once it authenticates; closes the file when done. A file
        whose last chunk is missing raises once the chunks before it are given."""
        try:
            yield from self._chunks()
        finally:
            self._file.close()

    def _chunks(self) -> Generator[bytes, None, None]:
        src, index = self.src, 0
        reader = self._file
        while True:
            prefix = reader.read(4)
            if len(prefix) < 4:
                raise _damaged(src, f"it ends before its last chunk, after {index} chunk(s)")
            length = int.from_bytes(prefix, "big")
            if not TAG_BYTES <= length <= self._chunk_size + TAG_BYTES:
                raise _damaged(src, f"chunk {index} has an impossible length")
            body = reader.read(NONCE_BYTES + length)
            if len(body) < NONCE_BYTES + length:
                raise _damaged(src, f"it ends inside chunk {index}")
            nonce, ciphertext = body[:NONCE_BYTES], body[NONCE_BYTES:]
            at_end = not reader.peek(1)
            try:
                plaintext = self._aead.decrypt(nonce, ciphertext, _aad(self._header, index, at_end))
            except InvalidTag:
                if at_end and self._authenticates(nonce, ciphertext, index, final=False):
                    raise _damaged(
                        src, f"it ends before its last chunk, after {index + 1} chunk(s)"
                    ) from None
                raise _damaged(src, f"chunk {index} does not authenticate") from None
            yield plaintext
            if at_end:
                return
            index += 1

    def _authenticates(self, nonce: bytes, ciphertext: bytes, index: int, *, final: bool) -> bool:
        try:
            self._aead.decrypt(nonce, ciphertext, _aad(self._header, index, final))
        except InvalidTag:
            return False
        return True


def decrypt_chunks(src: Path, keys: BackupKeys | None = None) -> Iterator[bytes]:
    """The plaintext of `src`, chunk by chunk, each only once it authenticates. Trust what
    was read only once the iterator has ended without an error: a file cut short raises after
    the chunks before the cut."""
    yield from _Decryption(Path(src), keys).chunks()


def read_encrypted_lines(src: Path, keys: BackupKeys | None = None) -> Iterator[bytes]:
    """The lines (newline included, where there is one) of a file `write_encrypted_bytes`
    wrote; raises like `decrypt_chunks`."""
    rest = b""
    for chunk in decrypt_chunks(src, keys):
        rest += chunk
        *lines, rest = rest.split(b"\n")
        for line in lines:
            yield line + b"\n"
    if rest:
        yield rest


# --- processes -------------------------------------------------------------------------


class ToolFailed(RuntimeError):
    """A process exited with a status other than 0; `stderr_tail` holds its last lines."""

    def __init__(self, tool: str, returncode: int, stderr_tail: Sequence[str]) -> None:
        self.tool = tool
        self.returncode = returncode
        self.stderr_tail = list(stderr_tail)
        text = "\n".join(self.stderr_tail)[-1500:] or "(nothing on stderr)"
        super().__init__(f"{tool} failed (exit status {returncode}): {text}")


class _StderrLines:
    """A process's stderr as lines, each passed on as it arrives; the last few are kept."""

    def __init__(self, on_line: Callable[[str], None]) -> None:
        self._on_line = on_line
        self._rest = b""
        self.tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)

    def feed(self, data: bytes) -> None:
        *lines, self._rest = (self._rest + data).split(b"\n")
        if len(self._rest) > MAX_LINE_CHARS * 4:
            lines.append(self._rest)
            self._rest = b""
        for line in lines:
            self._line(line)

    def finish(self) -> None:
        if self._rest:
            self._line(self._rest)
            self._rest = b""

    def _line(self, raw: bytes) -> None:
        line = raw.decode("utf-8", "replace").rstrip("\r")[:MAX_LINE_CHARS]
        if line.strip():
            self.tail.append(line)
            self._on_line(line)


def _start(
    argv: Sequence[str], env: Mapping[str, str] | None, *, feeding: bool
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        list(argv),
        stdin=subprocess.PIPE if feeding else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(env) if env is not None else None,
    )


def _wait(process: subprocess.Popen[bytes]) -> int:
    # In steps, so that a cancelled activity's exception is raised here within POLL_S.
    while True:
        try:
            return process.wait(timeout=POLL_S)
        except subprocess.TimeoutExpired:
            continue


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Kill the process (before its stdin is closed: it never sees a clean end of input)
    and reap it."""
    if process.poll() is None:
        process.kill()
    _wait(process)


def _close_pipes(process: subprocess.Popen[bytes]) -> None:
    for pipe in (process.stdin, process.stdout, process.stderr):
        if pipe is not None:
            with contextlib.suppress(OSError):  # a broken stdin: nothing is left to flush
                pipe.close()


@dataclass
class _Pumped:
    stdin_broken: bool = False


def _pump(
    process: subprocess.Popen[bytes],
    feed: Iterator[bytes] | None,
    on_stdout: Callable[[bytes], Any],
    stderr: _StderrLines,
) -> _Pumped:
    """Feed `feed` to the process's stdin (then close it) while reading its stdout and
    stderr, until all three are closed; in this thread, with bounded memory."""
    assert process.stdout is not None
    assert process.stderr is not None
    outcome = _Pumped()
    stdout_fd, stderr_fd = process.stdout.fileno(), process.stderr.fileno()
    stdin_fd: int | None = None
    pending = memoryview(b"")
    with selectors.DefaultSelector() as selector:
        selector.register(stdout_fd, selectors.EVENT_READ)
        selector.register(stderr_fd, selectors.EVENT_READ)
        if feed is not None:
            assert process.stdin is not None
            stdin_fd = process.stdin.fileno()
            os.set_blocking(stdin_fd, False)
            selector.register(stdin_fd, selectors.EVENT_WRITE)

        def close_stdin() -> None:
            nonlocal stdin_fd
            assert process.stdin is not None
            assert stdin_fd is not None
            selector.unregister(stdin_fd)
            stdin_fd = None
            # Broken: the process stopped reading, which its exit status tells.
            with contextlib.suppress(OSError):
                process.stdin.close()

        while selector.get_map():
            for key, _ in selector.select(timeout=POLL_S):
                fd = key.fd
                if fd == stdin_fd:
                    assert feed is not None
                    if not pending:
                        chunk = next(feed, None)
                        if chunk is None:
                            close_stdin()
                            continue
                        pending = memoryview(chunk)
                    try:
                        written = os.write(fd, pending[:READ_BYTES])
                    except BlockingIOError:
                        continue
                    except BrokenPipeError:
                        outcome.stdin_broken = True
                        close_stdin()
                        continue
                    pending = pending[written:]
                    continue
                data = os.read(fd, READ_BYTES)
                if not data:
                    selector.unregister(fd)
                elif fd == stdout_fd:
                    on_stdout(data)
                else:
                    stderr.feed(data)
    stderr.finish()
    return outcome


def encrypt_from_process(
    argv: Sequence[str],
    env: Mapping[str, str] | None,
    dest: Path,
    on_progress: Callable[[str], None],
    *,
    keys: BackupKeys | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> EncryptedFile:
    """Run `argv` (e.g. `pg_dump -Fc` writing to stdout) and encrypt its stdout into `dest`
    as it comes, holding at most a chunk in memory. Each stderr line goes to `on_progress` as
    it arrives and the plaintext byte count so far to `on_bytes` after each read, both in this
    thread. A nonzero exit raises `ToolFailed` with the stderr tail; on any failure the
    process is killed and no file is left behind."""
    writer = EncryptingWriter(Path(dest), keys)
    try:
        process = _start(argv, env, feeding=False)
    except BaseException:
        writer.abort()
        raise
    stderr = _StderrLines(on_progress)

    def on_stdout(data: bytes) -> None:
        writer.write(data)
        if on_bytes is not None:
            on_bytes(writer.plaintext_bytes)

    try:
        _pump(process, None, on_stdout, stderr)
        status = _wait(process)
        if status != 0:
            raise ToolFailed(Path(argv[0]).name, status, stderr.tail)
        return writer.close()
    except BaseException:
        _stop(process)
        writer.abort()
        raise
    finally:
        _close_pipes(process)


def decrypt_to_process(
    src: Path,
    argv: Sequence[str],
    env: Mapping[str, str] | None,
    on_progress: Callable[[str], None],
    *,
    keys: BackupKeys | None = None,
    stdout_sink: Callable[[bytes], None] | None = None,
) -> str:
    """Run `argv` (e.g. `pg_restore` reading the archive from stdin) with the decrypted
    `src` on its stdin; its stdout as text (or, with `stdout_sink`, passed there as it comes
    and "" returned). Each stderr line goes to `on_progress` as it arrives, in this thread.

    Only authenticated plaintext reaches the process, and a damaged file kills it before its
    input ends, so it never sees a clean end of a cut archive. A process that stops reading
    early (`pg_restore --list`) leaves the rest to be authenticated all the same. Raises
    `MigrationError` for a damaged file or a key the key file lacks (before the process
    starts), `ToolFailed` for a nonzero exit."""
    src = Path(src)
    decryption = _Decryption(src, keys)
    feed = decryption.chunks()
    collected = bytearray()

    def collect(data: bytes) -> None:
        if len(collected) + len(data) > MAX_STDOUT_BYTES:
            raise MigrationError(
                f"{Path(argv[0]).name} wrote more than {MAX_STDOUT_BYTES // (1024 * 1024)} MiB "
                f"reading {src}; pass its output to a sink"
            )
        collected.extend(data)

    try:
        process = _start(argv, env, feeding=True)
    except BaseException:
        feed.close()
        raise
    stderr = _StderrLines(on_progress)
    try:
        outcome = _pump(process, feed, stdout_sink or collect, stderr)
        status = _wait(process)
        if status != 0:
            raise ToolFailed(Path(argv[0]).name, status, stderr.tail)
        if outcome.stdin_broken:
            for _ in feed:
                pass  # authenticate what the process did not read
    except BaseException:
        _stop(process)
        raise
    finally:
        feed.close()
        _close_pipes(process)
    return collected.decode("utf-8", "replace")


def verify_backup(
    src: Path,
    pg_restore: str,
    *,
    keys: BackupKeys | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> int:
    """How many entries `pg_restore --list` finds in the decrypted `src`, once every chunk
    has authenticated; `MigrationError` when it is damaged or not a restorable archive."""
    try:
        listing = decrypt_to_process(
            src, [pg_restore, "--list"], None, on_progress or (lambda _line: None), keys=keys
        )
    except ToolFailed as err:
        tail = "\n".join(err.stderr_tail)[-800:]
        raise MigrationError(f"backup {src} is not restorable: {tail}") from None
    entries = sum(1 for line in listing.splitlines() if line.strip() and not line.startswith(";"))
    if entries == 0:
        raise MigrationError(f"backup {src} is not restorable: pg_restore lists no entries")
    return entries


# --- retention -------------------------------------------------------------------------


def prune_backups(folder: Path, keep_days: float, now: datetime) -> list[Path]:
    """Remove the backups (`*.dump.pgbk`) in `folder` last modified more than `keep_days`
    before `now`, with their sidecars (`*.json`); nothing else, nothing in subfolders, no
    link. What was removed, in name order."""
    if keep_days < 0:
        raise ValueError("keep_days must be 0 or more")
    cutoff = now.timestamp() - keep_days * 86_400
    try:
        names = sorted(os.listdir(folder))
    except FileNotFoundError:
        return []
    removed: list[Path] = []
    for name in names:
        if not name.endswith(BACKUP_SUFFIX) or name == BACKUP_SUFFIX:
            continue
        path = Path(folder) / name
        if not _regular_older(path, cutoff):
            continue
        path.unlink()
        removed.append(path)
        sidecar = sidecar_of(path)
        if _regular_older(sidecar, None):
            sidecar.unlink()
            removed.append(sidecar)
    return removed


def _regular_older(path: Path, cutoff: float | None) -> bool:
    try:
        status = os.lstat(path)
    except FileNotFoundError:
        return False
    return stat.S_ISREG(status.st_mode) and (cutoff is None or status.st_mtime < cutoff)
