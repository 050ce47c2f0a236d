"""`phasegate login` and `logout` against the real identity provider: a device-flow sign-in
approved on the provider's own pages while the command waits, who it says you are, the
automation variables, and signing out, with no token ever in the output."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

import starters
from devstack.identity_provider import IdentityProvider
from starters.cli import app
from starters.sign_in import SignInCache
from tests.support import identity

pytestmark = pytest.mark.integration

SOURCE_ROOT = Path(starters.__file__).resolve().parent.parent
CODE_LINE = re.compile(r"open (\S+) and enter the code (\S+)")


def phasegate(cache: Path, *args: str, **env: str) -> Result:
    """`phasegate ARGS` in this process, with its sign-ins in `cache`."""
    return CliRunner().invoke(
        app,
        list(args),
        env={
            "COLUMNS": "200",
            "PHASEGATE_SIGN_IN_CACHE": str(cache),
            "PHASEGATE_ID_TOKEN": "",
            "PHASEGATE_CREDENTIALS_FILE": "",
            **env,
        },
    )


def login_in_a_process(
    provider: IdentityProvider, cache: Path, username: str, *args: str
) -> tuple[int, str, str]:
    """`phasegate login ARGS` as its own process; `username` approves the code it shows on the
    provider's device page. Returns the exit code, stdout and stderr."""
    process = subprocess.Popen(
        [sys.executable, "-m", "starters.cli", "login", *args],
        cwd=SOURCE_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(cache.parent),
            "COLUMNS": "200",
            "PHASEGATE_SIGN_IN_CACHE": str(cache),
        },
    )
    assert process.stdout is not None
    assert process.stderr is not None
    shown: list[str] = []
    try:
        for line in process.stderr:
            shown.append(line)
            found = CODE_LINE.search(line)
            if found:
                assert found.group(1) == f"{provider.issuer}/device"
                identity.approve_device_code(provider, username, found.group(2))
                break
        # The rest of both streams through the same buffered readers (a few short lines).
        process.wait(timeout=60)
        out, rest = process.stdout.read(), process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
        process.stderr.close()
    return process.returncode, out, "".join(shown) + rest


def test_login_signs_in_with_the_device_flow_and_says_who_you_are(
    identity_provider: IdentityProvider, tmp_path: Path
) -> None:
    cache = tmp_path / "sign-in"

    code, out, err = login_in_a_process(
        identity_provider, cache, "carol", "--issuer", identity_provider.issuer
    )

    assert code == 0, out + err
    assert out.strip() == (
        f"signed in at {identity_provider.issuer} as Carol Chen <carol@phasegate.test>; "
        "groups: release-managers"
    )
    assert "Waiting for the sign-in" in err
    [entry] = SignInCache(cache).entries()
    assert entry.issuer == identity_provider.issuer
    for secret in (entry.id_token, entry.refresh_token or "-"):
        assert secret not in out + err

    # Signed in once: the next login without --issuer signs in there again.
    code, out, _ = login_in_a_process(identity_provider, cache, "alice")
    assert code == 0
    assert "as Alice Archer <alice@phasegate.test>" in out

    result = phasegate(cache, "logout")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"signed out of {identity_provider.issuer}"
    assert SignInCache(cache).entries() == []
    assert phasegate(cache, "logout").stdout.strip() == "not signed in"


def test_login_with_an_id_token_in_the_environment_says_who_without_printing_it(
    identity_provider: IdentityProvider, tmp_path: Path
) -> None:
    token = identity.sign_in(identity_provider, "bob").id_token

    result = phasegate(
        tmp_path / "sign-in",
        "login",
        "--issuer",
        identity_provider.issuer,
        PHASEGATE_ID_TOKEN=token,
    )

    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == (
        f"signed in at {identity_provider.issuer} (from PHASEGATE_ID_TOKEN) as Bob Baker "
        "<bob@phasegate.test>; groups: sre"
    )
    assert token not in result.output
    assert SignInCache(tmp_path / "sign-in").entries() == []


def test_a_refused_credentials_file_is_one_red_line_without_the_token(
    identity_provider: IdentityProvider, tmp_path: Path
) -> None:
    spent = identity.sign_in(identity_provider, "alice").refresh_token or ""
    identity.refresh(identity_provider, spent)
    credentials = tmp_path / "credentials.json"
    credentials.write_text(json.dumps({"refresh_token": spent}))

    result = phasegate(
        tmp_path / "sign-in",
        "login",
        "--issuer",
        identity_provider.issuer,
        PHASEGATE_CREDENTIALS_FILE=str(credentials),
    )

    assert result.exit_code == 1
    [line] = result.stderr.splitlines()
    assert line.startswith(
        f"PHASEGATE_CREDENTIALS_FILE={credentials}: {identity_provider.issuer} refused the refresh"
    )
    assert spent not in result.output
    assert result.stdout == ""


def test_login_without_a_provider_says_where_to_name_one(tmp_path: Path) -> None:
    result = phasegate(tmp_path / "sign-in", "login")

    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "--issuer URL (the plan's approvals.identity.issuer) or --launch LAUNCH_ID: where to "
        "sign in"
    )
