"""A local certificate authority for the TLS demo, the tests and the local Kubernetes control
plane: a CA and the leaf certificates it signs, written as PEM files. Never for production:
keys are written unencrypted."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from ipaddress import ip_address
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LOOPBACK = "127.0.0.1"


def _name(common_name: str, organizations: Sequence[str] = ()) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    attributes += [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in organizations]
    return x509.Name(attributes)


# Every flag of the key usage extension; x509.KeyUsage takes each of them by name.
_KEY_USAGES = (
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
    "key_cert_sign",
    "crl_sign",
    "encipher_only",
    "decipher_only",
)


def _key_usage(*granted: str) -> x509.KeyUsage:
    """The key usage extension allowing only the `granted` uses."""
    return x509.KeyUsage(**{usage: usage in granted for usage in _KEY_USAGES})


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


@dataclass
class Authority:
    """A test CA; `issue` writes a leaf certificate and key signed by it."""

    directory: Path
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @classmethod
    def create(cls, directory: Path, name: str = "Phasegate Test CA") -> Authority:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                _key_usage("digital_signature", "key_cert_sign", "crl_sign"), critical=True
            )
            .sign(key, hashes.SHA256())
        )
        directory.mkdir(parents=True, exist_ok=True)
        authority = cls(directory, key, certificate)
        authority.ca_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        _write_key(authority.key_file, key)
        return authority

    @property
    def ca_file(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def key_file(self) -> Path:
        """The CA's own key, for a signer such as Kubernetes' controller-manager."""
        return self.directory / "ca.key"

    def issue(
        self,
        label: str,
        *,
        dns: Sequence[str] = ("localhost",),
        ips: Sequence[str] = (LOOPBACK,),
        common_name: str | None = None,
        organizations: Sequence[str] = (),
        valid_from: timedelta = timedelta(days=-1),
        valid_for: timedelta = timedelta(days=365),
    ) -> tuple[Path, Path]:
        """Write `<label>.pem` and `<label>.key`; validity is relative to now.

        Every certificate is good for client authentication (its subject `common_name`, default
        the label, and `organizations`, which Kubernetes reads as user and groups); one with
        names or addresses is a serving certificate for them as well."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        names: list[x509.GeneralName] = [x509.DNSName(name) for name in dns]
        names += [x509.IPAddress(ip_address(ip)) for ip in ips]
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name or label, organizations))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now + valid_from)
            .not_valid_after(now + valid_from + valid_for)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        )
        if names:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        certificate = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False).sign(
            self.key, hashes.SHA256()
        )
        cert_path, key_path = self.directory / f"{label}.pem", self.directory / f"{label}.key"
        cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        _write_key(key_path, key)
        return cert_path, key_path
