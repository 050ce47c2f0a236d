"""The real Temporal cluster for the tests that need more than the dev server: started once per
session on the session's PostgreSQL, with TLS, client certificates and authorization by the
local identity provider's tokens; namespace `default` carries Phasegate's search attributes.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from temporalio.client import Client
from temporalio.converter import DataConverter

from devstack.identity_provider import IdentityProvider
from devstack.postgres_cluster import PostgresCluster
from devstack.processes import BinaryNotFoundError, LocalProcessError
from devstack.temporal_cluster import TemporalCluster
from devstack.temporal_cluster import temporal_cluster as start_cluster


@pytest.fixture(scope="session")
def temporal_cluster(
    tmp_path_factory: pytest.TempPathFactory,
    postgres: PostgresCluster,
    identity_provider: IdentityProvider,
) -> Iterator[TemporalCluster]:
    """The cluster; `token(client)` gives a machine client's bearer token."""
    try:
        cluster = start_cluster(
            tmp_path_factory.mktemp("temporal-cluster"), postgres, identity_provider
        )
        with cluster as running:
            yield running
    except BinaryNotFoundError as err:
        pytest.fail(str(err))
    except LocalProcessError as err:
        pytest.fail(f"the Temporal cluster did not start: {err}")


async def cluster_client(
    cluster: TemporalCluster,
    client: str | None = "phasegate-worker",
    *,
    namespace: str | None = None,
    client_cert: bool = True,
    data_converter: DataConverter = DataConverter.default,
) -> Client:
    """A client of `cluster` over TLS, showing the client certificate (unless `client_cert` is
    false) and the token of machine client `client` (none if `client` is None)."""
    return await Client.connect(
        cluster.address,
        namespace=namespace or cluster.namespace,
        tls=cluster.tls_config(client_cert=client_cert),
        api_key=cluster.token(client) if client else None,
        data_converter=data_converter,
    )
