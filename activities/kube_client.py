"""The `kubernetes` package's untyped calls behind typed signatures: making an API client,
the dynamic client and its resources, and a client model as the plain dict the API server
speaks. The rest of Phasegate reaches those calls only through this module.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from kubernetes import client, config, dynamic

ConfigException = config.ConfigException

# The kubernetes package leaves these unannotated; each is given the type it actually has
# here, once, so every caller is checked.
_new_client_from_config: Callable[[str], client.ApiClient] = config.new_client_from_config
_load_incluster_config: Callable[[], None] = config.load_incluster_config
_load_kube_config: Callable[[], None] = config.load_kube_config
_new_dynamic_client: Callable[[client.ApiClient], dynamic.DynamicClient] = dynamic.DynamicClient


def api_client_from_kubeconfig(path: str | Path) -> client.ApiClient:
    """An API client for the current context of the kubeconfig file at `path`.
    Raises `ConfigException` (or `OSError`) when the file cannot be used."""
    return _new_client_from_config(str(path))


def api_client_from_environment() -> client.ApiClient:
    """An API client from the pod's service account when running in a cluster, else from
    KUBECONFIG or ~/.kube/config. Raises `ConfigException` (or `OSError`) when neither works."""
    try:
        _load_incluster_config()
    except ConfigException:
        _load_kube_config()
    return client.ApiClient()


@functools.cache
def _serializer() -> client.ApiClient:
    # Serializing needs an ApiClient instance but none of its configuration; this one never
    # sends a request.
    return client.ApiClient(client.Configuration())


def to_dict(model: object) -> dict[str, Any]:
    """A client model (V1Deployment, V1PodTemplateSpec, ...) as the JSON object the API server
    would send: camelCase keys, unset fields left out, timestamps as ISO strings."""
    sanitize: Callable[[object], object] = _serializer().sanitize_for_serialization
    result = sanitize(model)
    if not isinstance(result, dict):
        raise TypeError(f"{type(model).__name__} does not serialize to a JSON object")
    return result


class HasMetadata(Protocol):
    """Any client model with `metadata` (V1Deployment, V1Pod, V1Namespace, ...)."""

    @property
    def metadata(self) -> client.V1ObjectMeta | None: ...


def metadata_of(obj: HasMetadata) -> client.V1ObjectMeta:
    """An object's metadata; empty when the server sent none, so its labels, annotations,
    generation and resource version read as unset rather than failing."""
    return obj.metadata if obj.metadata is not None else client.V1ObjectMeta()


class KubeResource:
    """One kind of object through the dynamic client, in and out as plain dicts. Raises the
    dynamic client's errors (`NotFoundError`, `DynamicApiError`) as they come."""

    def __init__(self, resource: Any) -> None:
        self._resource = resource

    @property
    def namespaced(self) -> bool:
        return bool(self._resource.namespaced)

    def get(self, name: str, namespace: str | None) -> dict[str, Any]:
        return _plain(self._resource.get(name=name, namespace=namespace))

    def create(self, body: dict[str, Any], namespace: str | None) -> dict[str, Any]:
        return _plain(self._resource.create(body=body, namespace=namespace))

    def replace(self, body: dict[str, Any], name: str, namespace: str | None) -> dict[str, Any]:
        return _plain(self._resource.replace(body=body, name=name, namespace=namespace))

    def delete(self, name: str, namespace: str | None, body: dict[str, Any] | None = None) -> None:
        self._resource.delete(name=name, namespace=namespace, body=body)

    def server_side_apply(
        self, body: dict[str, Any], name: str, namespace: str | None, field_manager: str
    ) -> dict[str, Any]:
        """Apply `body` as `field_manager`, taking over fields other managers own."""
        return _plain(
            self._resource.server_side_apply(
                body=body,
                name=name,
                namespace=namespace,
                field_manager=field_manager,
                force_conflicts=True,
            )
        )


class DynamicResources:
    """The dynamic client for one API client: finds a kind's resource by discovery."""

    def __init__(self, api: client.ApiClient) -> None:
        self._client = _new_dynamic_client(api)

    def find(self, api_version: str, kind: str) -> KubeResource:
        """Raises `ResourceNotFoundError` when the server has no such kind."""
        resources: Any = self._client.resources
        return KubeResource(resources.get(api_version=api_version, kind=kind))


def _plain(instance: Any) -> dict[str, Any]:
    result = instance.to_dict()
    if not isinstance(result, dict):
        raise TypeError(f"the dynamic client answered {type(result).__name__}, not an object")
    return result
