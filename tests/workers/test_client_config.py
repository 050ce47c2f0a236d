"""Temporal's standard client configuration: profiles in `temporal.toml`, `TEMPORAL_*`
variables and explicit settings, in that order of strength; each misconfiguration is one line
naming the setting, never a traceback and never the key."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.service import TLSConfig
from temporalio.testing import WorkflowEnvironment

from devstack.pki import Authority
from devstack.processes import free_port
from tests.support.cli import phasegate
from workers.client import (
    TemporalMisconfigured,
    TemporalRefused,
    TemporalUnreachable,
    connect,
    resolve_connection,
)
from workers.settings import Settings

SECRET = "sekrit-api-key-5f1c9e"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No TEMPORAL_* from the machine, and a home of the test's own; returns the default
    `temporal.toml` location (not written)."""
    for name in list(os.environ):
        if name.startswith(("TEMPORAL_", "PHASEGATE_API_KEY")):
            monkeypatch.delenv(name)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    return home / ".config" / "temporalio" / "temporal.toml"


@pytest.fixture
def default_file(clean_environment: Path) -> Path:
    return clean_environment


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA, a client certificate it signs, an expired one, and a stray key."""
    folder = tmp_path_factory.mktemp("client-pki")
    authority = Authority.create(folder / "ca")
    cert, key = authority.issue("client", dns=(), ips=())
    old_cert, old_key = authority.issue(
        "old", dns=(), ips=(), valid_from=timedelta(days=-30), valid_for=timedelta(days=1)
    )
    stray = folder / "stray.key"
    stray.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    encrypted = folder / "encrypted.key"
    encrypted.write_bytes(
        serialization.load_pem_private_key(key.read_bytes(), None).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pass"),
        )
    )
    not_pem = folder / "not-pem.txt"
    not_pem.write_text("hello\n")
    huge = folder / "huge.pem"
    huge.write_bytes(b"-" * (1024 * 1024 + 1))
    fifo = folder / "fifo.pem"
    os.mkfifo(fifo)
    return {
        "ca": authority.ca_file,
        "cert": cert,
        "key": key,
        "old_cert": old_cert,
        "old_key": old_key,
        "stray_key": stray,
        "encrypted_key": encrypted,
        "not_pem": not_pem,
        "huge": huge,
        "fifo": fifo,
    }


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def token(**claims: object) -> str:
    """An unsigned JWT with `claims`: what a refusal is explained from."""

    def part(value: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    return f"{part({'alg': 'RS256', 'kid': 'k'})}.{part(claims)}.{part('sig')}"


def one_line(err: BaseException) -> str:
    text = str(err)
    assert "\n" not in text
    assert SECRET not in text
    return text


# --- where the address, namespace and credentials come from ---------------------------------


def test_nothing_configured_means_the_local_dev_server() -> None:
    connection = resolve_connection(Settings())

    assert (connection.address, connection.namespace) == ("127.0.0.1:7233", "default")
    assert connection.tls is False
    assert connection.api_key is None


def test_the_default_profile_in_the_default_file_is_read(default_file: Path) -> None:
    write(default_file, '[profile.default]\naddress = "prod.example:7233"\nnamespace = "prod"\n')

    connection = resolve_connection(Settings())

    assert (connection.address, connection.namespace) == ("prod.example:7233", "prod")


def test_temporal_profile_and_config_file_choose_another_profile(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, default_file: Path
) -> None:
    write(default_file, '[profile.default]\naddress = "home:1"\n')
    other = write(
        tmp_path / "elsewhere.toml",
        '[profile.default]\naddress = "a:1"\n[profile.staging]\naddress = "staging:7233"\n'
        'namespace = "staging"\n',
    )
    monkeypatch.setenv("TEMPORAL_CONFIG_FILE", str(other))
    monkeypatch.setenv("TEMPORAL_PROFILE", "staging")

    settings = Settings()

    assert (settings.temporal_address, settings.temporal_namespace) == (
        "staging:7233",
        "staging",
    )


def test_environment_beats_the_profile_and_explicit_settings_beat_the_environment(
    monkeypatch: pytest.MonkeyPatch, default_file: Path
) -> None:
    write(default_file, '[profile.default]\naddress = "profile:1"\nnamespace = "from-profile"\n')
    monkeypatch.setenv("TEMPORAL_ADDRESS", "env:2")

    from_env = Settings()
    explicit = Settings(TEMPORAL_ADDRESS="explicit:3")

    assert (from_env.temporal_address, from_env.temporal_namespace) == ("env:2", "from-profile")
    assert explicit.temporal_address == "explicit:3"
    assert resolve_connection(explicit).address == "explicit:3"


def test_cli_options_beat_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`--address` wins over TEMPORAL_ADDRESS, and `--profile` / `--config-file` are read
    like TEMPORAL_PROFILE / TEMPORAL_CONFIG_FILE."""
    config = write(tmp_path / "t.toml", '[profile.ci]\naddress = "127.0.0.1:1"\n')
    monkeypatch.setenv("TEMPORAL_ADDRESS", "127.0.0.1:2")
    first = free_port()

    result = phasegate(
        "--config-file", str(config), "--profile", "ci", "--address", f"127.0.0.1:{first}", "list"
    )

    assert result.exit_code == 1
    assert f"cannot reach Temporal at 127.0.0.1:{first}" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_an_api_key_in_the_profile_turns_tls_on_unless_tls_is_off(
    monkeypatch: pytest.MonkeyPatch, default_file: Path
) -> None:
    write(default_file, f'[profile.default]\naddress = "cloud:7233"\napi_key = "{SECRET}"\n')

    with_key = resolve_connection(Settings())
    monkeypatch.setenv("TEMPORAL_TLS", "false")
    plain = resolve_connection(Settings())

    assert with_key.api_key == SECRET
    assert with_key.api_key_source is not None
    assert with_key.api_key_source.startswith("api_key of profile 'default'")
    assert with_key.tls is True
    assert plain.tls is False
    assert SECRET not in repr(with_key)


def test_temporal_api_key_beats_the_profile_and_stays_out_of_reprs(
    monkeypatch: pytest.MonkeyPatch, default_file: Path
) -> None:
    write(default_file, '[profile.default]\napi_key = "from-profile"\n')
    monkeypatch.setenv("TEMPORAL_API_KEY", SECRET)

    settings = Settings()
    connection = resolve_connection(settings)

    assert (connection.api_key, connection.api_key_source) == (SECRET, "TEMPORAL_API_KEY")
    assert SECRET not in repr(settings)
    assert SECRET not in repr(connection)


def test_an_empty_temporal_api_key_is_no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEMPORAL_API_KEY", "")

    connection = resolve_connection(Settings())

    assert (connection.api_key, connection.tls) == (None, False)


def test_an_api_key_file_is_read_and_cannot_be_combined_with_temporal_api_key(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    key_file = write(tmp_path / "token", f"{SECRET}\n")
    monkeypatch.setenv("PHASEGATE_API_KEY_FILE", str(key_file))

    connection = resolve_connection(Settings())
    monkeypatch.setenv("TEMPORAL_API_KEY", "other")
    with pytest.raises(TemporalMisconfigured) as both:
        resolve_connection(Settings())

    assert connection.api_key == SECRET
    assert connection.api_key_source == f"PHASEGATE_API_KEY_FILE ({key_file})"
    assert connection.tls is True
    assert one_line(both.value) == (
        "TEMPORAL_API_KEY and PHASEGATE_API_KEY_FILE are both set: keep one"
    )


def test_profile_tls_files_are_read_and_environment_paths_replace_them(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, pki: dict[str, Path], default_file: Path
) -> None:
    write(
        default_file,
        "[profile.default]\n"
        'address = "127.0.0.1:7233"\n'
        "[profile.default.tls]\n"
        f'server_ca_cert_path = "{pki["ca"]}"\n'
        f'client_cert_path = "{pki["old_cert"]}"\n'
        f'client_key_path = "{pki["old_key"]}"\n'
        'server_name = "localhost"\n'
        "[profile.default.grpc_meta]\n"
        'x-team = "launches"\n',
    )
    monkeypatch.setenv("TEMPORAL_TLS_CLIENT_CERT_PATH", str(pki["cert"]))
    monkeypatch.setenv("TEMPORAL_TLS_CLIENT_KEY_PATH", str(pki["key"]))
    monkeypatch.setenv("TEMPORAL_GRPC_META_X_REQUEST_SOURCE", "phasegate")

    connection = resolve_connection(Settings())

    assert isinstance(connection.tls, TLSConfig)
    assert connection.tls.server_root_ca_cert == pki["ca"].read_bytes()
    assert connection.tls.client_cert == pki["cert"].read_bytes()
    assert connection.tls.client_private_key == pki["key"].read_bytes()
    assert connection.tls.domain == "localhost"
    assert connection.rpc_metadata == {"x-team": "launches", "x-request-source": "phasegate"}
    assert connection.client_cert == f"TEMPORAL_TLS_CLIENT_CERT_PATH: {pki['cert']}"


def test_a_profile_written_by_the_temporal_cli_is_read(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, pki: dict[str, Path]
) -> None:
    """`temporal config set` writes the file; Phasegate reads the same profile."""
    config = tmp_path / "temporal.toml"
    temporal = str(Path(sys.executable).parent / "temporal")
    for prop, value in [
        ("address", "cluster.example:7233"),
        ("namespace", "launches"),
        ("api_key", SECRET),
        ("tls.server_ca_cert_path", str(pki["ca"])),
        ("tls.client_cert_path", str(pki["cert"])),
        ("tls.client_key_path", str(pki["key"])),
        ("tls.server_name", "cluster.example"),
    ]:
        subprocess.run(
            [temporal, "config", "set", "--profile", "prod", "--prop", prop, "--value", value],
            env={**os.environ, "TEMPORAL_CONFIG_FILE": str(config)},
            check=True,
            capture_output=True,
            timeout=60,
        )
    monkeypatch.setenv("TEMPORAL_CONFIG_FILE", str(config))
    monkeypatch.setenv("TEMPORAL_PROFILE", "prod")

    connection = resolve_connection(Settings())

    assert (connection.address, connection.namespace) == ("cluster.example:7233", "launches")
    assert connection.api_key == SECRET
    assert isinstance(connection.tls, TLSConfig)
    assert connection.tls.domain == "cluster.example"
    assert connection.tls.client_cert == pki["cert"].read_bytes()


# --- one line for each misconfiguration -----------------------------------------------------


def _tls_env(monkeypatch: pytest.MonkeyPatch, **paths: Path | str) -> None:
    for name, value in paths.items():
        monkeypatch.setenv(f"TEMPORAL_TLS_{name.upper()}", str(value))


@pytest.mark.parametrize(
    ("paths", "expected"),
    [
        (
            {"client_cert_path": "cert", "client_key_path": "/nowhere/client.key"},
            "TEMPORAL_TLS_CLIENT_KEY_PATH: /nowhere/client.key: no such file",
        ),
        (
            {"server_ca_cert_path": "/nowhere/ca.pem"},
            "TEMPORAL_TLS_SERVER_CA_CERT_PATH: /nowhere/ca.pem: no such file",
        ),
        (
            {"client_key_path": "key"},
            "TEMPORAL_TLS_CLIENT_KEY_PATH is set but TEMPORAL_TLS_CLIENT_CERT_PATH is not: "
            "a client certificate needs both",
        ),
        (
            {"client_cert_path": "cert"},
            "TEMPORAL_TLS_CLIENT_CERT_PATH is set but TEMPORAL_TLS_CLIENT_KEY_PATH is not: "
            "a client certificate needs both",
        ),
        (
            {"client_cert_path": "not_pem", "client_key_path": "key"},
            "TEMPORAL_TLS_CLIENT_CERT_PATH: {not_pem}: not a PEM certificate",
        ),
        (
            {"server_ca_cert_path": "not_pem"},
            "TEMPORAL_TLS_SERVER_CA_CERT_PATH: {not_pem}: not a PEM certificate",
        ),
        (
            {"client_cert_path": "cert", "client_key_path": "not_pem"},
            "TEMPORAL_TLS_CLIENT_KEY_PATH: {not_pem}: not a PEM private key",
        ),
        (
            {"client_cert_path": "cert", "client_key_path": "encrypted_key"},
            "TEMPORAL_TLS_CLIENT_KEY_PATH: {encrypted_key}: encrypted; Temporal clients need "
            "the key unencrypted",
        ),
        (
            {"client_cert_path": "cert", "client_key_path": "stray_key"},
            "TEMPORAL_TLS_CLIENT_KEY_PATH: {stray_key}: not the key of the certificate "
            "TEMPORAL_TLS_CLIENT_CERT_PATH: {cert}",
        ),
        (
            {"client_cert_path": "old_cert", "client_key_path": "old_key"},
            "TEMPORAL_TLS_CLIENT_CERT_PATH: {old_cert}: expired on ",
        ),
        (
            {"client_cert_path": "/", "client_key_path": "key"},
            "TEMPORAL_TLS_CLIENT_CERT_PATH: /: a directory, not a file",
        ),
        (
            {"server_ca_cert_path": "huge"},
            "TEMPORAL_TLS_SERVER_CA_CERT_PATH: {huge}: larger than 1024 KiB",
        ),
        (
            {"client_cert_path": "cert", "client_key_path": "fifo"},
            "TEMPORAL_TLS_CLIENT_KEY_PATH: {fifo}: not a regular file",
        ),
        (
            {"client_cert_path": "/dev/zero", "client_key_path": "key"},
            "TEMPORAL_TLS_CLIENT_CERT_PATH: /dev/zero: not a regular file",
        ),
    ],
    ids=[
        "missing-key-file",
        "missing-ca-file",
        "key-without-cert",
        "cert-without-key",
        "cert-not-pem",
        "ca-not-pem",
        "key-not-pem",
        "key-encrypted",
        "key-of-another-cert",
        "cert-expired",
        "cert-is-a-directory",
        "ca-too-large",
        "key-is-a-fifo",
        "cert-is-endless",
    ],
)
def test_each_bad_tls_setting_is_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch,
    pki: dict[str, Path],
    paths: dict[str, str],
    expected: str,
) -> None:
    _tls_env(monkeypatch, **{name: pki.get(value, value) for name, value in paths.items()})

    with pytest.raises(TemporalMisconfigured) as raised:
        resolve_connection(Settings())

    assert one_line(raised.value).startswith(expected.format(**pki))
    assert "BEGIN" not in str(raised.value)


def test_a_bad_tls_file_in_the_profile_is_named_by_its_key(
    pki: dict[str, Path], default_file: Path
) -> None:
    write(
        default_file,
        "[profile.default.tls]\n"
        f'client_cert_path = "{pki["cert"]}"\n'
        'client_key_path = "/nowhere/k.pem"\n',
    )

    with pytest.raises(TemporalMisconfigured) as raised:
        resolve_connection(Settings())

    assert one_line(raised.value) == (
        f"tls.client_key_path of profile 'default' in {default_file}: /nowhere/k.pem: no such file"
    )


@pytest.mark.parametrize(
    ("file_text", "environment", "expected"),
    [
        (
            None,
            {"TEMPORAL_CONFIG_FILE": "/nowhere/t.toml"},
            "TEMPORAL_CONFIG_FILE: /nowhere/t.toml: no such file",
        ),
        (
            '[profile.default]\naddress = "a:1"\n',
            {"TEMPORAL_PROFILE": "prod"},
            "TEMPORAL_PROFILE: no profile 'prod' in {file}",
        ),
        (
            "[profile.default\n",
            {},
            "{file}: not a Temporal client configuration: TOML parse error at line 1",
        ),
        (
            '[profile.default]\naddres = "a:1"\n',
            {},
            "{file}: not a Temporal client configuration: TOML parse error at line 2, "
            "column 1: unknown field `addres`",
        ),
        (None, {"TEMPORAL_TLS": "maybe"}, "TEMPORAL_TLS: 'maybe' is not true or false"),
        (
            None,
            {"TEMPORAL_TLS_DISABLE_HOST_VERIFICATION": "true"},
            "TEMPORAL_TLS_DISABLE_HOST_VERIFICATION: not supported by Phasegate; set "
            "TEMPORAL_TLS_SERVER_NAME",
        ),
        (
            "[profile.default.tls]\ndisable_host_verification = true\n",
            {},
            "tls.disable_host_verification of profile 'default' in {file}: not supported",
        ),
        (
            None,
            {"TEMPORAL_API_KEY": f"{SECRET} {SECRET}"},
            "TEMPORAL_API_KEY: not a single token (spaces or line breaks)",
        ),
        (
            None,
            {"PHASEGATE_API_KEY_FILE": "/nowhere/token"},
            "PHASEGATE_API_KEY_FILE: /nowhere/token: no such file",
        ),
    ],
    ids=[
        "config-file-missing",
        "profile-missing",
        "toml-syntax",
        "toml-unknown-key",
        "tls-not-boolean",
        "host-verification-env",
        "host-verification-profile",
        "api-key-two-words",
        "api-key-file-missing",
    ],
)
def test_each_bad_configuration_is_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch,
    default_file: Path,
    file_text: str | None,
    environment: dict[str, str],
    expected: str,
) -> None:
    if file_text is not None:
        write(default_file, file_text)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)

    with pytest.raises(TemporalMisconfigured) as raised:
        resolve_connection(Settings())

    assert one_line(raised.value).startswith(expected.format(file=default_file))


def test_an_empty_api_key_file_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    key_file = write(tmp_path / "token", "\n")
    monkeypatch.setenv("PHASEGATE_API_KEY_FILE", str(key_file))

    with pytest.raises(TemporalMisconfigured) as raised:
        resolve_connection(Settings())

    assert one_line(raised.value) == f"PHASEGATE_API_KEY_FILE: {key_file}: empty"


# --- against the dev server -----------------------------------------------------------------


def dev_profile(dev_env: WorkflowEnvironment, path: Path, *, namespace: str | None = None) -> Path:
    target = dev_env.client.service_client.config.target_host
    return write(
        path,
        f'[profile.dev]\naddress = "{target}"\nnamespace = "{namespace or dev_env.client.namespace}"\n',
    )


async def test_a_profile_file_connects_to_its_server(
    dev_env: WorkflowEnvironment, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = dev_profile(dev_env, tmp_path / "temporal.toml")
    monkeypatch.setenv("TEMPORAL_CONFIG_FILE", str(config))
    monkeypatch.setenv("TEMPORAL_PROFILE", "dev")

    client = await connect()
    described = await client.workflow_service.describe_namespace(
        DescribeNamespaceRequest(namespace=client.namespace)
    )

    assert (
        client.service_client.config.target_host == dev_env.client.service_client.config.target_host
    )
    assert described.namespace_info.name == dev_env.client.namespace


async def test_a_namespace_the_server_lacks_is_refused_at_connect(
    dev_env: WorkflowEnvironment, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = dev_profile(dev_env, tmp_path / "temporal.toml", namespace="no-such-namespace")
    monkeypatch.setenv("TEMPORAL_CONFIG_FILE", str(config))
    monkeypatch.setenv("TEMPORAL_PROFILE", "dev")
    target = dev_env.client.service_client.config.target_host

    with pytest.raises(TemporalRefused) as raised:
        await connect()

    assert one_line(raised.value) == (
        f"namespace 'no-such-namespace' not found at {target}: create it or set "
        "TEMPORAL_NAMESPACE to one that exists"
    )


async def test_nothing_listening_is_unreachable_in_one_line() -> None:
    address = f"127.0.0.1:{free_port()}"

    with pytest.raises(TemporalUnreachable) as raised:
        await connect(Settings(TEMPORAL_ADDRESS=address))

    assert one_line(raised.value).startswith(
        f"cannot reach Temporal at {address} (namespace default): start it with `phasegate dev`"
    )


async def test_tls_to_a_plain_server_says_it_does_not_speak_tls(
    dev_env: WorkflowEnvironment, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = dev_env.client.service_client.config.target_host
    monkeypatch.setenv("TEMPORAL_TLS", "true")

    with pytest.raises(TemporalUnreachable) as raised:
        await connect(Settings(TEMPORAL_ADDRESS=target))

    assert one_line(raised.value).startswith(
        f"Temporal at {target} does not speak TLS: set TEMPORAL_TLS=false"
    )


async def test_an_api_key_file_that_changes_is_given_to_the_client(
    dev_env: WorkflowEnvironment, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The dev server ignores API keys; what matters is that the running client sends the
    file's new content from then on."""
    key_file = write(tmp_path / "token", token(sub="first"))
    monkeypatch.setenv("PHASEGATE_API_KEY_FILE", str(key_file))
    monkeypatch.setenv("PHASEGATE_API_KEY_REFRESH_SECONDS", "0.1")
    monkeypatch.setenv("TEMPORAL_TLS", "false")
    target = dev_env.client.service_client.config.target_host

    client = await connect(Settings(TEMPORAL_ADDRESS=target))
    first = client.api_key
    renewed = token(sub="second")
    key_file.write_text(renewed + "\n")
    for _ in range(200):  # the file is checked every 0.1 s; ten seconds at most
        if client.api_key == renewed:
            break
        await asyncio.sleep(0.05)

    assert first == token(sub="first")
    assert client.api_key == renewed
    described = await client.workflow_service.describe_namespace(
        DescribeNamespaceRequest(namespace=client.namespace)
    )
    assert described.namespace_info.name == client.namespace


def test_the_cli_prints_a_wrong_namespace_as_one_red_line(
    dev_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    config = dev_profile(dev_env, tmp_path / "temporal.toml", namespace="nope")

    result = phasegate("--config-file", str(config), "--profile", "dev", "list")

    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        f"namespace 'nope' not found at {dev_env.client.service_client.config.target_host}: "
        "create it or set TEMPORAL_NAMESPACE to one that exists"
    ]


def test_the_cli_lists_launches_through_a_profile(
    dev_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    config = dev_profile(dev_env, tmp_path / "temporal.toml")

    result = phasegate(
        "--config-file", str(config), "--profile", "dev", "list", "--service", "no-such-service"
    )

    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "no launches found"


def test_the_worker_exits_1_with_one_line_for_a_wrong_namespace(
    dev_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    config = dev_profile(dev_env, tmp_path / "temporal.toml", namespace="nope")
    env = {
        **os.environ,
        "TEMPORAL_CONFIG_FILE": str(config),
        "TEMPORAL_PROFILE": "dev",
        "PHASEGATE_METRICS_ADDRESS": f"127.0.0.1:{free_port()}",
    }

    done = subprocess.run(
        [sys.executable, "-m", "workers.main"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"phasegate-worker: namespace 'nope' not found at "
        f"{dev_env.client.service_client.config.target_host}: create it or set "
        "TEMPORAL_NAMESPACE to one that exists"
    ]


def test_a_setting_of_the_wrong_type_is_one_line_naming_its_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PHASEGATE_API_KEY_REFRESH_SECONDS", "soon")

    result = phasegate("list")

    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        "PHASEGATE_API_KEY_REFRESH_SECONDS: Input should be a valid number, unable to parse "
        "string as a number"
    ]


def test_the_worker_names_a_setting_of_the_wrong_type_in_one_line() -> None:
    env = {
        **os.environ,
        "PHASEGATE_API_KEY_REFRESH_SECONDS": "inf",
        "PHASEGATE_GRACEFUL_SHUTDOWN_SECONDS": "nan",
        "PHASEGATE_MAX_CONCURRENT_ACTIVITIES": "0",
    }

    done = subprocess.run(
        [sys.executable, "-m", "workers.main"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "phasegate-worker: PHASEGATE_API_KEY_REFRESH_SECONDS: Input should be a finite number; "
        "PHASEGATE_MAX_CONCURRENT_ACTIVITIES: Input should be greater than or equal to 1; "
        "PHASEGATE_GRACEFUL_SHUTDOWN_SECONDS: Input should be a finite number"
    ]
