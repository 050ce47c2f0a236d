"""The approval service's settings and signing key: read from files and the environment, every
bad field named."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from approvals.keys import SigningKeyError, load_signing_key
from approvals.settings import SettingsProblem, load_settings, resolve_secret
from schemas.basics import SecretRef

PROVIDER = {
    "issuer": "https://idp.example.com",
    "cli_client_id": "phasegate-cli",
    "web_client_id": "phasegate-web",
    "web_client_secret": {"env": "WEB_SECRET"},
}
GOOD = {
    "public_url": "https://approvals.example.com",
    "signing_key_file": "/var/lib/phasegate-approvals/key.pem",
    "identity_providers": [PROVIDER],
}


def write(tmp_path: Path, document: object, name: str = "approvals.yaml") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(document))
    return path


def test_a_file_gives_the_settings_with_defaults(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, GOOD), environ={})
    assert settings.public_url == "https://approvals.example.com"
    assert (settings.host, settings.port, settings.proof_lifetime_seconds) == (
        "127.0.0.1",
        8780,
        300,
    )
    provider = settings.identity_providers[0]
    assert provider.claims == ["sub", "email", "name", "preferred_username", "groups"]
    assert provider.web_client_secret == SecretRef(env="WEB_SECRET")


def test_the_environment_overrides_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write(tmp_path, GOOD)
    monkeypatch.setenv("PHASEGATE_APPROVALS_CONFIG", str(config))
    monkeypatch.setenv("PHASEGATE_APPROVALS_PROOF_LIFETIME_SECONDS", "120")
    monkeypatch.setenv(
        "PHASEGATE_APPROVALS_IDENTITY_PROVIDERS",
        json.dumps([{"issuer": "http://127.0.0.1:9998", "cli_client_id": "cli"}]),
    )
    settings = load_settings()
    assert settings.proof_lifetime_seconds == 120
    assert [p.issuer for p in settings.identity_providers] == ["http://127.0.0.1:9998"]
    assert settings.public_url == GOOD["public_url"]


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (
            {"public_url": "ftp://approvals"},
            "public_url: must be an http:// or https:// URL, got 'ftp://approvals'",
        ),
        ({"proof_lifetime_seconds": 3600}, "proof_lifetime_seconds: must be <= 900"),
        ({"identity_providers": []}, "identity_providers: must have at least 1 item(s)"),
        ({"port": 0}, "port: must be >= 1"),
        ({"listen": "0.0.0.0"}, "listen: is not a known field"),
        (
            {"identity_providers": [{**PROVIDER, "issuer": "idp"}]},
            "identity_providers[0].issuer: must be an http:// or https:// URL, got 'idp'",
        ),
        (
            {"identity_providers": [{"issuer": "https://idp", "cli_client_id": "a b"}]},
            "identity_providers[0].cli_client_id: must be printable ASCII without spaces",
        ),
        (
            {"identity_providers": [{"issuer": "https://i", "cli_client_id": "c", "claims": []}]},
            "identity_providers[0].claims: must have at least 1 item(s)",
        ),
        (
            {
                "identity_providers": [
                    {"issuer": "https://i", "cli_client_id": "c", "scopes": ["email"]}
                ]
            },
            "identity_providers[0].scopes: must include openid",
        ),
        (
            {
                "identity_providers": [
                    {"issuer": "https://i", "cli_client_id": "c"},
                    {"issuer": "https://i", "cli_client_id": "d"},
                ]
            },
            "identity_providers: lists https://i more than once",
        ),
    ],
)
def test_a_bad_setting_is_named(tmp_path: Path, change: dict[str, object], problem: str) -> None:
    with pytest.raises(SettingsProblem) as raised:
        load_settings(write(tmp_path, {**GOOD, **change}), environ={})
    assert problem in raised.value.problems


def test_a_file_that_is_not_a_mapping_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "approvals.yaml"
    path.write_text("- public_url\n")
    with pytest.raises(SettingsProblem) as raised:
        load_settings(path, environ={})
    assert raised.value.problems == ["(file): must be a mapping of settings"]


def test_a_secret_comes_from_a_file_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "secret").write_text("from-file\n")
    monkeypatch.setenv("WEB_SECRET", "from-env")
    assert resolve_secret(SecretRef(file=str(tmp_path / "secret")), "f").get_secret_value() == (
        "from-file"
    )
    assert resolve_secret(SecretRef(env="WEB_SECRET"), "f").get_secret_value() == "from-env"
    monkeypatch.delenv("WEB_SECRET")
    with pytest.raises(SettingsProblem) as raised:
        resolve_secret(SecretRef(env="WEB_SECRET"), "identity_providers[0].web_client_secret")
    assert raised.value.problems == [
        "identity_providers[0].web_client_secret: environment variable WEB_SECRET is not set"
    ]


def test_a_created_key_is_private_and_keeps_its_id(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "signing-key.pem"
    created = load_signing_key(path, create=True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = load_signing_key(path)
    assert again.kid == created.kid
    assert again.trusted_key() == created.trusted_key()
    assert len(created.kid) == 43  # an RFC 7638 SHA-256 thumbprint, base64url
    assert list(tmp_path.joinpath("keys").iterdir()) == [path]


def test_a_missing_or_foreign_key_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SigningKeyError, match="does not exist"):
        load_signing_key(tmp_path / "absent.pem")
    not_a_key = tmp_path / "text.pem"
    not_a_key.write_text("hello")
    with pytest.raises(SigningKeyError, match="not an unencrypted PEM private key"):
        load_signing_key(not_a_key)
