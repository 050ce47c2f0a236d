"""`phasegate demo --secure`: the demo service behind TLS passes every security check, then launches."""

from __future__ import annotations

from pathlib import Path

import pytest

from devstack.demo import FLAG_KEY
from tests.support.cli import run_phasegate
from tests.support.servers import canary_share

pytestmark = pytest.mark.integration


def test_secure_demo_validates_the_service_behind_tls_then_launches(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"

    run = run_phasegate(
        "demo", "--auto-approve", "--secure", "--workdir", str(workdir), columns=250
    )

    output = run.output
    assert run.returncode == 0, output
    assert "the same service behind TLS at https://127.0.0.1:" in output
    assert "Security findings" in output
    for evidence in (
        "negotiated TLSv1.3; refused TLSv1, TLSv1.1",
        "chain trusted by",
        "answered 401; 401, 403 wanted",
        "answered 403; 401, 403 wanted",
        "first 429 at request 21 (limit 20 + margin 2)",
        '`sum(demo_audit_records_total{path="/orders"})` went',
    ):
        assert evidence in output
    assert "FAILED" not in output
    assert canary_share(workdir / "stack" / "flags" / "checkout.json", FLAG_KEY) == 100.0
