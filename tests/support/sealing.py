"""The worker key every test worker, worker process and replay shares.

Committed histories were recorded with it, so they replay; it seals nothing outside tests.
"""

from __future__ import annotations

import os
from pathlib import Path

from temporalio.worker import Interceptor

from workers.sealing import SealInterceptor, load_keys

TEST_WORKER_KEY_FILE = Path(__file__).resolve().parent / "worker-test.key"
# Worker processes the tests start read the same key.
os.environ["PHASEGATE_WORKER_KEY_FILE"] = str(TEST_WORKER_KEY_FILE)


def test_interceptors() -> list[Interceptor]:
    return [SealInterceptor(load_keys(str(TEST_WORKER_KEY_FILE)))]
