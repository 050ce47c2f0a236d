"""One way to connect to Temporal, shared by the worker, the CLI and the tests."""

from __future__ import annotations

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.runtime import Runtime

from workers.settings import Settings


class TemporalUnreachable(RuntimeError):
    """The Temporal server did not answer; the message says where we looked and what to do."""


async def connect(settings: Settings | None = None, *, runtime: Runtime | None = None) -> Client:
    settings = settings or Settings()
    try:
        return await Client.connect(
            settings.temporal_address,
            namespace=settings.temporal_namespace,
            data_converter=pydantic_data_converter,
            runtime=runtime,
        )
    except RuntimeError as err:
        raise TemporalUnreachable(
            f"cannot reach Temporal at {settings.temporal_address} "
            f"(namespace {settings.temporal_namespace}): start it with `phasegate dev` "
            f"or point TEMPORAL_ADDRESS at your server ({str(err).splitlines()[0][:200]})"
        ) from None
