"""The backup keys every test worker, worker process and activity called directly uses.

The committed `backup-test.keys` is checked out 0644, which a worker refuses; the session
uses a 0600 copy of it in a private folder, named by PHASEGATE_BACKUP_KEYS.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

from activities import backup_store
from activities.backup_store import BackupKeys, load_backup_keys

TEST_BACKUP_KEYS_FILE = Path(__file__).resolve().parent / "backup-test.keys"


def _session_keys_file() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="phasegate-backup-keys-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    copy = folder / "backup-test.keys"
    descriptor = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as out:
        out.write(TEST_BACKUP_KEYS_FILE.read_bytes())
    return copy


SESSION_BACKUP_KEYS_FILE = _session_keys_file()
# Worker processes the tests start read the same file; activities called directly use it.
os.environ["PHASEGATE_BACKUP_KEYS"] = str(SESSION_BACKUP_KEYS_FILE)
backup_store.configure(load_backup_keys(SESSION_BACKUP_KEYS_FILE))


def session_backup_keys() -> BackupKeys:
    return load_backup_keys(SESSION_BACKUP_KEYS_FILE)
