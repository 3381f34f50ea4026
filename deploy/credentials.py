"""Credentials for a Flower deployment with TLS and SuperNode authentication.

:func:`generate_credentials` makes them with the ``cryptography`` package: a self-signed CA
(ECDSA P-384), a server certificate for the SuperLink signed by it (its ``subjectAltName``
lists the host names / IP addresses the SuperNodes dial; default ``127.0.0.1`` and
``localhost``) and one ECDSA P-384 key pair per SuperNode in OpenSSH format (what
``flower-supernode`` and ``flwr supernode register`` read; Flower accepts NIST curves
only).  See Flower's "Enable TLS connections" and "Authenticate SuperNodes" guides.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

DEFAULT_HOSTS = ("127.0.0.1", "localhost")




@dataclass(frozen=True)
class SuperNodeKey:
    """One SuperNode's ECDSA P-384 key pair, OpenSSH format."""

    private: Path
    public: Path


@dataclass(frozen=True)
class Credentials:
    """Paths of everything :func:`generate_credentials` wrote.

    ``ca_cert`` goes to every SuperNode and ``flwr`` CLI (``--root-certificates`` /
    ``root-certificates``); ``server_cert``/``server_key`` (and ``ca_cert``) to the
    SuperLink; ``supernode_keys[i].private`` to SuperNode ``i`` only, its ``.public`` to
    whoever registers it.  ``ca_key`` signs further server certificates; keep it offline.
    """

    folder: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    supernode_keys: tuple[SuperNodeKey, ...]
    hosts: tuple[str, ...]


def _crypto():
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    return x509, hashes, serialization, ec, ExtendedKeyUsageOID, NameOID


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, 0o600)


def _pem_key(key) -> bytes:
    _, _, serialization, _, _, _ = _crypto()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _san_entries(hosts: Sequence[str]):
    x509 = _crypto()[0]
    entries = []
    for host in hosts:
        if not isinstance(host, str) or not host.strip() or any(c.isspace() for c in host):
            raise ValueError(f"a certificate host must be a host name or an IP address, got {host!r}")
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            entries.append(x509.DNSName(host))
    return entries


def generate_supernode_key(private_path: str | os.PathLike, public_path: str | os.PathLike, *,
                           comment: str = "") -> SuperNodeKey:
    """Write a fresh ECDSA P-384 key pair for SuperNode authentication.

    The private key is written in OpenSSH format (mode 0600; ``flower-supernode
    --auth-supernode-private-key`` reads it with ``load_ssh_private_key``), the public key
    as one ``ecdsa-sha2-nistp384 AAAA... [comment]`` line (``flwr supernode register``
    reads it with ``load_ssh_public_key``).  Keys are random, by design not seeded.
    """
    _, _, serialization, ec, _, _ = _crypto()
    private_path, public_path = Path(private_path), Path(public_path)
    key = ec.generate_private_key(ec.SECP384R1())
    _write_private(private_path, key.private_bytes(serialization.Encoding.PEM,
                                                   serialization.PrivateFormat.OpenSSH,
                                                   serialization.NoEncryption()))
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH)
    public_path.parent.mkdir(parents=True, exist_ok=True)
    public_path.write_bytes(public + (b" " + comment.encode() if comment else b"") + b"\n")
    return SuperNodeKey(private_path, public_path)


def generate_credentials(folder: str | os.PathLike, num_supernodes: int, *,
                         hosts: Sequence[str] = DEFAULT_HOSTS, valid_days: int = 30,
                         prefix: str = "supernode") -> Credentials:
    """Write a CA, a SuperLink server certificate and ``num_supernodes`` SuperNode key
    pairs into ``folder``.

    Files: ``ca.crt``/``ca.key`` (self-signed CA, ``basicConstraints CA:TRUE``,
    ``keyUsage keyCertSign``), ``server.crt``/``server.key`` (signed by the CA,
    ``subjectAltName`` = ``hosts`` -- IP addresses as ``iPAddress``, names as ``dNSName``
    -- ``extendedKeyUsage serverAuth``), and ``<prefix>-<i>`` / ``<prefix>-<i>.pub`` for
    ``i`` in ``0..num_supernodes-1`` (see :func:`generate_supernode_key`).  All keys are
    ECDSA P-384 and random (not seeded).  TLS clients check the address they dial against
    the SAN, so ``hosts`` must hold every address SuperNodes and the CLI use for the
    SuperLink (the SuperLink's own ServerApp runner dials ``127.0.0.1``; keep it when the
    SuperLink binds ``0.0.0.0``).
    """
    if isinstance(num_supernodes, bool) or not isinstance(num_supernodes, int) or num_supernodes < 0:
        raise ValueError(f"num_supernodes must be an integer >= 0, got {num_supernodes!r}")
    if isinstance(valid_days, bool) or not isinstance(valid_days, int) or valid_days < 1:
        raise ValueError(f"valid_days must be an integer >= 1, got {valid_days!r}")
    hosts = tuple(hosts)
    if not hosts:
        raise ValueError("hosts must name at least one host name or IP address, got ()")
    sans = _san_entries(hosts)
    if not prefix or "/" in prefix or prefix.startswith("."):
        raise ValueError(f"prefix must be a plain file-name prefix, got {prefix!r}")
    x509, hashes, serialization, ec, EKU, NameOID = _crypto()
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    now = _dt.datetime.now(_dt.timezone.utc) - _dt.timedelta(minutes=5)
    until = now + _dt.timedelta(days=valid_days)

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fl-defense"),
                         x509.NameAttribute(NameOID.COMMON_NAME, "fl-defense deployment CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (x509.CertificateBuilder()
               .subject_name(ca_name).issuer_name(ca_name)
               .public_key(ca_key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now).not_valid_after(until)
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                            key_encipherment=False, data_encipherment=False,
                                            key_agreement=False, key_cert_sign=True, crl_sign=True,
                                            encipher_only=False, decipher_only=False), critical=True)
               .add_extension(ca_ski, critical=False)
               .sign(ca_key, hashes.SHA384()))

    server_key = ec.generate_private_key(ec.SECP384R1())
    server_cert = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fl-defense"),
                                            x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
                   .issuer_name(ca_name)
                   .public_key(server_key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now).not_valid_after(until)
                   .add_extension(x509.SubjectAlternativeName(sans), critical=False)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                                key_encipherment=False, data_encipherment=False,
                                                key_agreement=True, key_cert_sign=False, crl_sign=False,
                                                encipher_only=False, decipher_only=False), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([EKU.SERVER_AUTH]), critical=False)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(server_key.public_key()),
                                  critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                                  critical=False)
                   .sign(ca_key, hashes.SHA384()))

    paths = {name: folder / name for name in ("ca.crt", "ca.key", "server.crt", "server.key")}
    paths["ca.crt"].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    _write_private(paths["ca.key"], _pem_key(ca_key))
    paths["server.crt"].write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    _write_private(paths["server.key"], _pem_key(server_key))
    keys = tuple(generate_supernode_key(folder / f"{prefix}-{i}", folder / f"{prefix}-{i}.pub",
                                        comment=f"{prefix}-{i}")
                 for i in range(num_supernodes))
    return Credentials(folder, paths["ca.crt"], paths["ca.key"], paths["server.crt"],
                       paths["server.key"], keys, hosts)
