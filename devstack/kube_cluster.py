"""A local Kubernetes control plane from the binaries `deploy/kube/build.sh` caches: etcd,
kube-apiserver, kube-controller-manager, kube-scheduler and kwok (fake nodes whose pods become
Ready), each on free loopback ports, with certificates made here. `start_control_plane` gives
a kubeconfig for the official Python client; `KUBECONFIG` in the environment means "use that
cluster instead" (`control_plane_from_env`).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import ssl
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from devstack.pki import Authority
from devstack.processes import (
    LOOPBACK,
    BinaryNotFoundError,
    LocalProcessError,
    ManagedProcess,
    free_port,
    wait_until_ready,
)

# One source for the versions: deploy/kube/versions.env says the same (a test checks).
KUBE_VERSION = "v1.34.4"
ETCD_VERSION = "v3.6.16"
KWOK_VERSION = "v0.7.0"

API_READY_TIMEOUT_S = 90.0
NODES_READY_TIMEOUT_S = 60.0
SERVICE_CIDR = "10.96.0.0/16"
FAKE_NODE_ANNOTATION = "kwok.x-k8s.io/node"
KUBE_NOT_FOUND = (
    "the local Kubernetes control plane is not built: run `deploy/setup.sh kube` (it builds "
    "the binaries from Go modules and caches them under {cache}) or set PHASEGATE_KUBE_BIN_DIR"
)


def kube_cache() -> Path:
    return Path(
        os.environ.get("PHASEGATE_KUBE_CACHE", Path.home() / ".cache" / "phasegate" / "kube")
    )


@dataclass(frozen=True)
class KubeBinaries:
    etcd: Path
    apiserver: Path
    controller_manager: Path
    scheduler: Path
    kwok: Path

    @classmethod
    def find(cls) -> KubeBinaries:
        """The cached binaries of the pinned versions, or all of them from PHASEGATE_KUBE_BIN_DIR."""
        override = os.environ.get("PHASEGATE_KUBE_BIN_DIR")
        if override:
            base = Path(override)
            kube_dir = etcd_dir = kwok_dir = base
        else:
            base = kube_cache()
            kube_dir = base / f"kubernetes-{KUBE_VERSION}"
            etcd_dir = base / f"etcd-{ETCD_VERSION}"
            kwok_dir = base / f"kwok-{KWOK_VERSION}"
        found = cls(
            etcd=etcd_dir / "etcd",
            apiserver=kube_dir / "kube-apiserver",
            controller_manager=kube_dir / "kube-controller-manager",
            scheduler=kube_dir / "kube-scheduler",
            kwok=kwok_dir / "kwok",
        )
        missing = [str(path) for path in found.all() if not os.access(path, os.X_OK)]
        if missing:
            raise BinaryNotFoundError(
                KUBE_NOT_FOUND.format(cache=base) + f" (missing: {', '.join(missing)})"
            )
        return found

    def all(self) -> list[Path]:
        return [self.etcd, self.apiserver, self.controller_manager, self.scheduler, self.kwok]


# --- certificates -------------------------------------------------------------------------


def _new_key() -> rsa.RSAPrivateKey:
    """The service-account signing key."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def write_kubeconfig(
    path: Path, *, server: str, ca: Path, cert: Path, key: Path, user: str = "admin"
) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "phasegate", "cluster": {"server": server, "certificate-authority": str(ca)}}
        ],
        "users": [
            {"name": user, "user": {"client-certificate": str(cert), "client-key": str(key)}}
        ],
        "contexts": [{"name": "phasegate", "context": {"cluster": "phasegate", "user": user}}],
        "current-context": "phasegate",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# --- the control plane --------------------------------------------------------------------


@dataclass
class ControlPlane:
    """A running (or borrowed, when `processes` is empty) cluster; `kubeconfig` is cluster-admin."""

    kubeconfig: Path
    server: str
    workdir: Path | None = None
    ca: Authority | None = None
    processes: list[ManagedProcess] = field(default_factory=list)

    @property
    def local(self) -> bool:
        return bool(self.processes)

    def user_kubeconfig(self, user: str, groups: Sequence[str] = ()) -> Path:
        """A kubeconfig for `user` in `groups`, authenticated by a client certificate, so RBAC
        decides what it may do. Only for a control plane started here (it holds the CA)."""
        if self.ca is None or self.workdir is None:
            raise LocalProcessError(
                "user_kubeconfig needs the CA of a control plane started by phasegate, not "
                f"the borrowed cluster at {self.server}"
            )
        cert, key = self.ca.issue(
            f"user-{user}", dns=(), ips=(), common_name=user, organizations=groups
        )
        return write_kubeconfig(
            self.ca.directory / f"{user}.kubeconfig",
            server=self.server,
            ca=self.ca.ca_file,
            cert=cert,
            key=key,
            user=user,
        )

    def stop(self) -> None:
        """Stop every component, newest first (kwok before the API server before etcd)."""
        for process in reversed(self.processes):
            process.stop(timeout=10)

    def log_tails(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.log_tail(15)}" for p in self.processes)


def control_plane_from_env() -> ControlPlane | None:
    """The cluster `KUBECONFIG` names, if it is set: used instead of starting one."""
    value = os.environ.get("KUBECONFIG")
    if not value:
        return None
    path = Path(value.split(os.pathsep)[0]).expanduser()
    config = yaml.safe_load(path.read_text())
    contexts = {c["name"]: c["context"] for c in config.get("contexts", [])}
    clusters = {c["name"]: c["cluster"] for c in config.get("clusters", [])}
    context = contexts.get(config.get("current-context", ""), {})
    server = clusters.get(context.get("cluster", ""), {}).get("server", "")
    return ControlPlane(kubeconfig=path, server=server)


def start_control_plane(
    workdir: Path, *, nodes: int = 2, binaries: KubeBinaries | None = None
) -> ControlPlane:
    """etcd, kube-apiserver, controller-manager, scheduler and kwok with `nodes` Ready fake
    nodes; every component on free loopback ports, its log in `workdir/<name>.log`."""
    bins = binaries or KubeBinaries.find()
    workdir.mkdir(parents=True, exist_ok=True)
    pki = workdir / "pki"
    ca = Authority.create(pki, name="phasegate-local-ca")
    serving_cert, serving_key = ca.issue(
        "apiserver",
        common_name="kube-apiserver",
        dns=("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"),
        ips=(LOOPBACK, str(next(ipaddress.ip_network(SERVICE_CIDR).hosts()))),
    )
    admin_cert, admin_key = ca.issue(
        "admin", dns=(), ips=(), common_name="phasegate-admin", organizations=["system:masters"]
    )
    sa_key_path = pki / "service-account.key"
    sa_pub_path = pki / "service-account.pub"
    sa_key = _new_key()
    sa_key_path.write_bytes(
        sa_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    sa_pub_path.write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )

    api_port = free_port()
    server = f"https://{LOOPBACK}:{api_port}"
    kubeconfig = write_kubeconfig(
        workdir / "admin.kubeconfig", server=server, ca=ca.ca_file, cert=admin_cert, key=admin_key
    )
    plane = ControlPlane(kubeconfig=kubeconfig, server=server, workdir=workdir, ca=ca)
    try:
        etcd_url = _start_etcd(plane, bins, workdir)
        _start(
            plane,
            "kube-apiserver",
            [
                str(bins.apiserver),
                f"--etcd-servers={etcd_url}",
                f"--bind-address={LOOPBACK}",
                f"--advertise-address={LOOPBACK}",
                f"--secure-port={api_port}",
                f"--cert-dir={pki}",
                f"--tls-cert-file={serving_cert}",
                f"--tls-private-key-file={serving_key}",
                f"--client-ca-file={ca.ca_file}",
                f"--service-account-key-file={sa_pub_path}",
                f"--service-account-signing-key-file={sa_key_path}",
                "--service-account-issuer=https://kubernetes.default.svc",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--authorization-mode=Node,RBAC",
                "--endpoint-reconciler-type=none",
                "--allow-privileged=true",
                "--enable-priority-and-fairness=false",
                "--profiling=false",
                "--v=1",
            ],
            workdir,
            api_port,
            server,
        )
        _wait_for_api(plane, API_READY_TIMEOUT_S)
        for name, binary, extra in (
            (
                "kube-controller-manager",
                bins.controller_manager,
                [
                    f"--service-account-private-key-file={sa_key_path}",
                    f"--root-ca-file={ca.ca_file}",
                    f"--cluster-signing-cert-file={ca.ca_file}",
                    f"--cluster-signing-key-file={ca.key_file}",
                    "--use-service-account-credentials=false",
                    "--concurrent-deployment-syncs=5",
                ],
            ),
            ("kube-scheduler", bins.scheduler, []),
        ):
            port = free_port()
            _start(
                plane,
                name,
                [
                    str(binary),
                    f"--kubeconfig={kubeconfig}",
                    f"--authentication-kubeconfig={kubeconfig}",
                    f"--authorization-kubeconfig={kubeconfig}",
                    "--leader-elect=false",
                    f"--bind-address={LOOPBACK}",
                    f"--secure-port={port}",
                    "--v=1",
                    *extra,
                ],
                workdir,
                port,
                f"https://{LOOPBACK}:{port}",
            )
        _start_kwok(plane, bins, workdir)
        _create_fake_nodes(plane, nodes)
    except BaseException:
        plane.stop()
        raise
    return plane


@contextlib.contextmanager
def control_plane(workdir: Path, *, nodes: int = 2) -> Iterator[ControlPlane]:
    """`KUBECONFIG`'s cluster if set, else a local control plane stopped on exit."""
    borrowed = control_plane_from_env()
    if borrowed is not None:
        yield borrowed
        return
    plane = start_control_plane(workdir, nodes=nodes)
    try:
        yield plane
    finally:
        plane.stop()


def _start(
    plane: ControlPlane, name: str, argv: list[str], workdir: Path, port: int, url: str
) -> ManagedProcess:
    managed = ManagedProcess(name, argv, workdir=workdir, port=port, url=url)
    plane.processes.append(managed)
    return managed


def _start_etcd(plane: ControlPlane, bins: KubeBinaries, workdir: Path) -> str:
    client_port, peer_port = free_port(), free_port()
    client_url = f"http://{LOOPBACK}:{client_port}"
    peer_url = f"http://{LOOPBACK}:{peer_port}"
    data = workdir / "etcd-data"
    shutil.rmtree(data, ignore_errors=True)
    etcd = _start(
        plane,
        "etcd",
        [
            str(bins.etcd),
            "--name=phasegate",
            f"--data-dir={data}",
            f"--listen-client-urls={client_url}",
            f"--advertise-client-urls={client_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=phasegate={peer_url}",
            "--unsafe-no-fsync=true",
            "--log-level=warn",
        ],
        workdir,
        client_port,
        client_url,
    )
    wait_until_ready(etcd, lambda: _get_ok(f"{client_url}/health"), 30.0)
    return client_url


def _start_kwok(plane: ControlPlane, bins: KubeBinaries, workdir: Path) -> None:
    stages = workdir / "kwok-stages.yaml"
    stages.write_text(KWOK_STAGES)
    port = free_port()
    _start(
        plane,
        "kwok",
        [
            str(bins.kwok),
            f"--kubeconfig={plane.kubeconfig}",
            f"--config={stages}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={FAKE_NODE_ANNOTATION}=fake",
            "--cidr=10.244.0.0/16",
            # kwok renews each fake node's lease, so the node lifecycle controller sees a
            # healthy node and lifts the not-ready taint every new node starts with.
            "--node-lease-duration-seconds=40",
            "--node-ip=10.0.0.1",
            f"--server-address={LOOPBACK}:{port}",
        ],
        workdir,
        port,
        f"http://{LOOPBACK}:{port}",
    )


def _create_fake_nodes(plane: ControlPlane, count: int) -> None:
    """Nodes kwok plays the kubelet for; its node stage marks them Ready."""
    client = _admin_client(plane)
    for index in range(count):
        name = f"kwok-node-{index}"
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "annotations": {FAKE_NODE_ANNOTATION: "fake"},
                "labels": {"type": "kwok", "kubernetes.io/hostname": name},
            },
        }
        response = client.post("/api/v1/nodes", json=node)
        if response.status_code not in (201, 409):
            raise LocalProcessError(f"could not create fake node {name}: {response.text}")
    deadline = time.monotonic() + NODES_READY_TIMEOUT_S
    while True:
        items = client.get("/api/v1/nodes").json().get("items", [])
        # Schedulable too: a new node keeps its not-ready taint until the node lifecycle
        # controller sees kwok's lease.
        ready = [
            n
            for n in items
            if not n.get("spec", {}).get("taints")
            and any(
                c.get("type") == "Ready" and c.get("status") == "True"
                for c in n.get("status", {}).get("conditions", [])
            )
        ]
        if len(ready) >= count:
            return
        for process in plane.processes:
            if not process.running:
                raise LocalProcessError(
                    f"{process.name} exited with code {process.process.returncode}:\n"
                    f"{process.log_tail()}"
                )
        if time.monotonic() > deadline:
            raise LocalProcessError(
                f"kwok did not make {count} fake nodes Ready within {NODES_READY_TIMEOUT_S:g}s "
                f"({len(ready)} ready); logs:\n{plane.log_tails()}"
            )
        time.sleep(0.2)


def _admin_client(plane: ControlPlane) -> httpx.Client:
    assert plane.workdir is not None
    assert plane.ca is not None
    context = ssl.create_default_context(cafile=str(plane.ca.ca_file))
    pki = plane.workdir / "pki"
    context.load_cert_chain(str(pki / "admin.pem"), str(pki / "admin.key"))
    return httpx.Client(base_url=plane.server, verify=context, timeout=5.0, trust_env=False)


def _wait_for_api(plane: ControlPlane, timeout: float) -> None:
    apiserver = plane.processes[-1]
    client = _admin_client(plane)

    def ready() -> bool:
        try:
            return client.get("/readyz").status_code == 200
        except httpx.HTTPError:
            return False

    wait_until_ready(apiserver, ready, timeout)


def _get_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


# kwok plays the kubelet: fake nodes become Ready, pods scheduled onto them become Running and
# Ready at once, and a pod being deleted goes away (there is no container to stop). Each
# status template is Go template text kwok renders into the object's status.
NODE_READY_STATUS = """\
{{ $now := Now }}
conditions:
{{ range NodeConditions }}
- lastHeartbeatTime: {{ $now | Quote }}
  lastTransitionTime: {{ $now | Quote }}
  message: {{ .message | Quote }}
  reason: {{ .reason | Quote }}
  status: {{ .status | Quote }}
  type: {{ .type | Quote }}
{{ end }}
addresses:
- address: {{ NodeIP | Quote }}
  type: InternalIP
allocatable: {cpu: "64", memory: 256Gi, pods: "500"}
capacity: {cpu: "64", memory: 256Gi, pods: "500"}
nodeInfo:
  architecture: amd64
  operatingSystem: linux
  kubeletVersion: kwok
phase: Running
"""
POD_READY_STATUS = """\
{{ $now := Now }}
conditions:
- {type: Initialized, status: "True", lastTransitionTime: {{ $now | Quote }}}
- {type: ContainersReady, status: "True", lastTransitionTime: {{ $now | Quote }}}
- {type: Ready, status: "True", lastTransitionTime: {{ $now | Quote }}}
containerStatuses:
{{ range .spec.containers }}
- name: {{ .name | Quote }}
  image: {{ .image | Quote }}
  ready: true
  started: true
  restartCount: 0
  state: {running: {startedAt: {{ $now | Quote }}}}
{{ end }}
hostIP: {{ NodeIPWith .spec.nodeName | Quote }}
podIP: {{ PodIPWith .spec.nodeName false ( or .metadata.uid "" ) ( or .metadata.name "" ) ( or .metadata.namespace "" ) | Quote }}
phase: Running
startTime: {{ $now | Quote }}
"""


def _kwok_stage(
    name: str, kind: str, match: list[dict[str, object]], next_: dict[str, object]
) -> dict[str, object]:
    """A kwok Stage: every object of `kind` matching all `match` expressions changes as
    `next_` says."""
    return {
        "apiVersion": "kwok.x-k8s.io/v1alpha1",
        "kind": "Stage",
        "metadata": {"name": name},
        "spec": {
            "resourceRef": {"apiGroup": "v1", "kind": kind},
            "selector": {"matchExpressions": match},
            "next": next_,
        },
    }


KWOK_STAGES = yaml.safe_dump_all(
    [
        _kwok_stage(
            "phasegate-node-ready",
            "Node",
            [{"key": ".status.phase", "operator": "NotIn", "values": ["Running"]}],
            {"statusTemplate": NODE_READY_STATUS},
        ),
        _kwok_stage(
            "phasegate-pod-ready",
            "Pod",
            [
                {"key": ".metadata.deletionTimestamp", "operator": "DoesNotExist"},
                {"key": ".status.podIP", "operator": "DoesNotExist"},
            ],
            {"statusTemplate": POD_READY_STATUS},
        ),
        _kwok_stage(
            "phasegate-pod-gone",
            "Pod",
            [{"key": ".metadata.deletionTimestamp", "operator": "Exists"}],
            {"finalizers": {"empty": True}, "delete": True},
        ),
    ],
    sort_keys=False,
)


def main() -> None:
    """`python -m devstack.kube_cluster [workdir]`: start, print the kubeconfig, wait."""
    import signal
    import sys

    workdir = Path(sys.argv[1] if len(sys.argv) > 1 else ".phasegate/kube").resolve()
    started = time.monotonic()
    plane = start_control_plane(workdir)
    print(f"# control plane ready in {time.monotonic() - started:.1f}s at {plane.server}")
    print(f"# export KUBECONFIG={plane.kubeconfig}")
    print(plane.kubeconfig.read_text(), flush=True)
    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        while not stop and all(p.running for p in plane.processes):
            time.sleep(0.5)
    finally:
        plane.stop()


if __name__ == "__main__":
    main()
