"""The worker limits every test runs under, and limits files a test writes for itself.

`limits-test.yaml` is what test workers (in-process and worker processes) and activities
called directly apply; a test that needs other limits writes its own file with `write_limits`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import yaml

from activities import limits
from activities.limits import WorkerLimits, load_limits

TEST_LIMITS_FILE = Path(__file__).resolve().parent / "limits-test.yaml"


def _session_limits_file() -> Path:
    """The committed file, or a copy that also allows this machine's temporary folder when
    it is not under /tmp (TMPDIR set elsewhere): pytest's tmp_path lives there."""
    temp = Path(tempfile.gettempdir()).resolve()
    committed = load_limits(TEST_LIMITS_FILE)
    if committed.flag_file_problem(str(temp / "x")) is None:
        return TEST_LIMITS_FILE
    data = committed.model_dump()
    for section, key in (("secrets", "files"), ("files", "flags"), ("files", "read")):
        data[section][key].append(str(temp))
    data["files"]["backups"].append(str(temp))
    copy = Path(tempfile.mkdtemp(prefix="phasegate-limits-")) / "limits-test.yaml"
    copy.write_text(yaml.safe_dump(data))
    return copy


SESSION_LIMITS_FILE = _session_limits_file()
# Worker processes the tests start read the same file; activities called directly apply it.
os.environ["PHASEGATE_WORKER_LIMITS"] = str(SESSION_LIMITS_FILE)
limits.configure(load_limits(SESSION_LIMITS_FILE))


def session_limits() -> WorkerLimits:
    return load_limits(SESSION_LIMITS_FILE)


def write_limits(folder: Path, **sections: Any) -> Path:
    """A limits file in `folder` with just these sections (the rest at their safe defaults)."""
    path = folder / "worker-limits.yaml"
    path.write_text(yaml.safe_dump(sections))
    return path
