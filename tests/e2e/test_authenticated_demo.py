"""`phasegate demo --authenticated --auto-approve`, run as a user runs it: a process of its own
starting the identity provider and the approval service beside the demo stack, alice starting
the launch and carol and bob approving it, each with a proof of their own; and the headless
sign-in through the provider's login form it does that with."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from devstack.identity_provider import (
    IdentityProvider,
    PasswordSignInFailed,
    Person,
    find_binary,
    sign_in_with_password,
)
from devstack.processes import BinaryNotFoundError
from tests.support.identity import verify_id_token

pytestmark = [pytest.mark.integration, pytest.mark.timeout(360)]

# A proof the approval service signed, as its log records it (never the proof itself).
ISSUED = re.compile(r"issued: (\w+) '([^']*)' on launch '([^']*)' \(run '[^']*'\) for '([^']*)'")


def test_authenticated_demo_is_started_and_approved_by_people_who_signed_in(
    tmp_path: Path,
) -> None:
    try:
        idp_binary = find_binary()
    except BinaryNotFoundError as err:
        pytest.fail(str(err))
    workdir = tmp_path / "demo"
    script = Path(sys.executable).parent / "phasegate"

    run = subprocess.run(
        [str(script), "demo", "--authenticated", "--auto-approve", "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        timeout=300,
        env={
            "COLUMNS": "200",
            "PATH": f"{script.parent}:/usr/bin:/bin",
            "PHASEGATE_IDP_BIN": str(idp_binary),
        },
        check=False,
    )

    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    for person in ("alice", "bob", "carol"):
        assert f"  {person:<6} password {person}-test-password" in output
    launch = re.search(r"launch (checkout-2\.0\.0-[0-9a-f]{8}) started", output)
    assert launch is not None, output
    assert "started by alice@phasegate.test (signed in at http://127.0.0.1:" in output
    # Alice started it, so carol approves; the gate at 50% needs a second person: bob.
    assert (
        "soft-launch.before: approved by carol@phasegate.test (update; authenticated: true)"
        in output
    )
    assert (
        "soft-launch.step-3: approved by carol@phasegate.test, bob@phasegate.test "
        "(update; authenticated: true)"
    ) in output
    assert f"{launch.group(1)} completed" in output
    # Every act had a proof of its own from the approval service, for that launch and person.
    log = (workdir / "sign-in" / "approvals" / "approvals.log").read_text()
    issued = [match.groups() for match in ISSUED.finditer(log)]
    assert {at for _, _, at, _ in issued} == {launch.group(1)}, log
    assert [(act, who) for act, _, _, who in issued if act == "start"] == [
        ("start", "Alice Archer")
    ]
    votes = [(target, who) for act, target, _, who in issued if act == "approve"]
    for vote in (
        ("soft-launch.before", "Carol Chen"),
        ("soft-launch.step-3", "Carol Chen"),
        ("soft-launch.step-3", "Bob Baker"),
    ):
        assert vote in votes, log


def test_a_person_signs_in_through_the_login_form_with_their_password(
    identity_provider: IdentityProvider,
) -> None:
    id_token = sign_in_with_password(identity_provider, "carol")

    claims = verify_id_token(identity_provider, id_token)
    assert (claims["email"], claims["groups"]) == ("carol@phasegate.test", ["release-managers"])


def test_a_wrong_password_is_refused_with_the_login_forms_words(
    identity_provider: IdentityProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    carol = identity_provider.person("carol")
    impostor = Person(carol.username, "not-her-password", carol.name, carol.email, carol.groups)
    monkeypatch.setattr(identity_provider, "people", (impostor,))

    with pytest.raises(PasswordSignInFailed, match="did not sign carol in: username or password"):
        sign_in_with_password(identity_provider, "carol")
