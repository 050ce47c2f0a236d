"""The approval service for the tests: started once per session on a free loopback port,
trusting the session's identity provider (its CLI client and its web client)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from devstack.approval_service import LocalApprovalService, start_approval_service_for
from devstack.identity_provider import IdentityProvider
from devstack.processes import LocalProcessError


@pytest.fixture(scope="session")
def approval_service(
    identity_provider: IdentityProvider, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalApprovalService]:
    """`phasegate-approvals` signing proofs for people who sign in at `identity_provider`."""
    try:
        service = start_approval_service_for(
            identity_provider, tmp_path_factory.mktemp("approvals")
        )
    except LocalProcessError as err:
        pytest.fail(f"the approval service did not start: {err}")
    with service:
        yield service
