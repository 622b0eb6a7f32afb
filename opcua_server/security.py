"""OPC UA security: application instance certificates and the trust list.

PKI folder layout (``pilot opcua certs --pki DIR``)::

    DIR/own/cert.der            this application's certificate (DER, self-signed, 2048-bit RSA, SHA-256)
    DIR/own/cert.pem            the same in PEM (for stacks that want PEM)
    DIR/own/private/key.pem     its private key (PEM, mode 0600)
    DIR/trusted/                peer certificates we trust (DER or PEM), one file each
    DIR/rejected/               peers we refused, saved so an operator can move them to trusted/

Trust is by exact certificate (SHA-256 fingerprint of the DER), re-read at every handshake, so
moving a file into ``trusted/`` takes effect without a restart. The folder's own certificate is
always trusted (a server and a client sharing one PKI folder need no trust step). An untrusted
peer is refused with BadCertificateUntrusted and one log line naming the file to trust. A missing
own certificate is created on first use (``ensure_certificate``; logged with path and fingerprint).

Users and roles: ``users.py``; a client's use of all this: ``client_security.ClientSecurity``;
a server's: ``server_security.secure_server``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
import re
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from asyncua import ua
from asyncua.common.utils import ServiceError
from asyncua.crypto import cert_gen
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = logging.getLogger(__name__)



class SecurityError(Exception):
    """A security setting or credential problem, with a message meant for the operator."""


# -- certificates ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Pki:
    root: Path

    @property
    def cert(self) -> Path:
        return self.root / "own" / "cert.der"

    @property
    def key(self) -> Path:
        return self.root / "own" / "private" / "key.pem"

    @property
    def trusted(self) -> Path:
        return self.root / "trusted"

    @property
    def rejected(self) -> Path:
        return self.root / "rejected"

    def ensure_dirs(self) -> None:
        """Create the folders owner-only (0700) from the start: no window in which another local
        user could read a key or plant a certificate in ``trusted/``."""
        for d in (self.root, self.cert.parent, self.key.parent, self.trusted, self.rejected):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)

    def check(self) -> None:
        for f in (self.cert, self.key):
            if not f.is_file():
                raise SecurityError(f"missing {f}: create it with `pilot opcua certs --pki {self.root}`")


def create_certificate(pki: Pki, app_uri: str, common_name: str = "pilot-line",
                       hosts: tuple[str, ...] = ("localhost", "127.0.0.1"), days: int = 365,
                       overwrite: bool = False, valid_from: dt.datetime | None = None) -> Path:
    """Create a self-signed application instance certificate (client and server use) and key,
    valid for ``days`` from ``valid_from`` (default: now)."""
    pki.ensure_dirs()
    if pki.cert.exists() and not overwrite:
        raise SecurityError(f"{pki.cert} exists; pass overwrite to replace it")
    key = cert_gen.generate_private_key()
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(app_uri)]
    for h in dict.fromkeys((*hosts, socket.gethostname())):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    cert = cert_gen.generate_self_signed_app_certificate(
        key, common_name, {}, names,
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH], days=days)
    if valid_from is not None:
        cert = _redated(cert, key, valid_from, valid_from + dt.timedelta(days=days))
    write_private(pki.key, cert_gen.dump_private_key_as_pem(key))
    write_private(pki.cert, cert.public_bytes(serialization.Encoding.DER), mode=0o644)
    write_private(pki.cert.with_suffix(".pem"), cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return pki.cert


def default_app_uri() -> str:
    """The ApplicationUri of a certificate created on first use: ``urn:HOST:pilot-line``."""
    return f"urn:{socket.gethostname()}:pilot-line"


def ensure_certificate(pki: Pki, app_uri: str | None = None) -> Path:
    """The PKI folder's own certificate, created (and logged with its path and SHA-256
    fingerprint) when it is missing. One certificate per process, for server and client use."""
    if pki.cert.is_file():
        return pki.cert
    if pki.key.exists():
        raise SecurityError(f"{pki.key} exists but {pki.cert} does not: restore the certificate or remove the key "
                            f"and let a new pair be created")
    path = create_certificate(pki, app_uri or default_app_uri())
    log.info("created the application certificate %s (SHA-256 %s); peers trust it by copying it into their "
             "trusted/ folder", path, fingerprint(_load_cert(path.read_bytes())))
    return path


def _redated(cert: x509.Certificate, key, not_before: dt.datetime, not_after: dt.datetime) -> x509.Certificate:
    """The same certificate (subject, serial, key, extensions) with another validity period."""
    builder = (x509.CertificateBuilder().subject_name(cert.subject).issuer_name(cert.issuer)
               .serial_number(cert.serial_number).public_key(cert.public_key())
               .not_valid_before(not_before).not_valid_after(not_after))
    for ext in cert.extensions:
        builder = builder.add_extension(ext.value, critical=ext.critical)
    return builder.sign(private_key=key, algorithm=hashes.SHA256())


def write_private(path: Path, data: bytes, mode: int = 0o600) -> Path:
    """Write ``data`` to a file created with ``mode`` at once (never world-readable in between,
    whatever the umask); an existing file is truncated and brought to ``mode``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
    finally:
        os.close(fd)
    return path


def certificate_uri(path: Path) -> str:
    """The application URI in a certificate's subjectAltName (what the application must announce)."""
    cert = _load_cert(path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if not uris:
        raise SecurityError(f"{path} has no application URI in subjectAltName")
    return uris[0]


def _load_cert(data: bytes) -> x509.Certificate:
    if data.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


class TrustList:
    """Certificate validation of a peer (OPC UA Part 4, 6.1.3), as asyncua's validator hook.

    In this order, each refusal with its OPC UA status code and one log line:
    trusted (exact certificate in ``trusted/``; refused peers are saved to ``rejected/`` so an
    operator can move them) -> BadCertificateUntrusted; validity period -> BadCertificateTimeInvalid;
    the host name of the endpoint in subjectAltName (server certificates, when ``host`` is given)
    -> BadCertificateHostNameInvalid; the ApplicationUri the peer announces equal to the URI in its
    subjectAltName -> BadCertificateUriInvalid. ``last_refusal`` keeps the operator's sentence of
    the latest refusal."""

    def __init__(self, pki: Pki, peer: str, host: str | None = None):
        self.pki = pki
        self.peer = peer  # "client" or "server", for messages
        self.host = host
        self.last_refusal: str | None = None

    def trusted_fingerprints(self) -> set[str]:
        """The certificates in ``trusted/``, and the application's own (a server and a client of one
        process, or of one host sharing the PKI folder, trust each other with no trust step)."""
        out = set()
        if self.pki.cert.is_file():
            out.add(fingerprint(_load_cert(self.pki.cert.read_bytes())))
        for f in sorted(self.pki.trusted.glob("*")):
            if f.suffix.lower() in (".der", ".pem", ".crt", ".cer"):
                try:
                    out.add(fingerprint(_load_cert(f.read_bytes())))
                except ValueError:
                    log.warning("ignoring %s in the trust list: not a certificate", f)
        return out

    def rejected_path(self, cert: x509.Certificate) -> Path:
        cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(cn[0].value) if cn else "peer")
        return self.pki.rejected / f"{stem}[{fingerprint(cert)[:16]}].der"

    def untrusted_message(self, cert: x509.Certificate) -> str:
        path = self.rejected_path(cert)
        return (f"untrusted {self.peer} certificate {cert.subject.rfc4514_string()}: to trust it, "
                f"move {path} into {self.pki.trusted}/")

    def check(self, cert: x509.Certificate, app_uri: str | None) -> tuple[int, str] | None:
        """(status code, sentence) of the first check that fails, or None when the peer passes."""
        if fingerprint(cert) not in self.trusted_fingerprints():
            return ua.StatusCodes.BadCertificateUntrusted, self.untrusted_message(cert)
        subject = cert.subject.rfc4514_string()
        now = dt.datetime.now(dt.UTC)
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            return ua.StatusCodes.BadCertificateTimeInvalid, (
                f"{self.peer} certificate {subject} is valid from {cert.not_valid_before_utc:%Y-%m-%d %H:%M} "
                f"to {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC, not now: the peer needs a new certificate")
        names = _san(cert)
        if self.host is not None and not _host_matches(self.host, names):
            return ua.StatusCodes.BadCertificateHostNameInvalid, (
                f"{self.peer} certificate {subject} is not issued for host {self.host!r} "
                f"(it names {sorted(names['dns'] | names['ip']) or 'no host'})")
        if app_uri is not None and app_uri not in names["uri"]:
            return ua.StatusCodes.BadCertificateUriInvalid, (
                f"{self.peer} announces ApplicationUri {app_uri!r} but its certificate {subject} is issued for "
                f"{sorted(names['uri']) or 'no URI'}")
        return None

    async def __call__(self, cert: x509.Certificate, app_description: ua.ApplicationDescription) -> None:
        if self.peer == "client" and _session_channel_unsecured():
            return  # a certificate sent over a None channel authenticates nothing; OPC UA ignores it
        verdict = self.check(cert, app_description.ApplicationUri if app_description is not None else None)
        if verdict is None:
            self.last_refusal = None
            return
        code, sentence = verdict
        self.last_refusal = f"{sentence} ({ua.StatusCode(code).name})"
        if code == ua.StatusCodes.BadCertificateUntrusted:
            path = self.rejected_path(cert)
            self.pki.rejected.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_private(path, cert.public_bytes(serialization.Encoding.DER), mode=0o644)
        log.warning(self.last_refusal)
        raise ServiceError(code)


def _san(cert: x509.Certificate) -> dict[str, set[str]]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return {"uri": set(), "dns": set(), "ip": set()}
    return {"uri": set(san.get_values_for_type(x509.UniformResourceIdentifier)),
            "dns": {d.lower() for d in san.get_values_for_type(x509.DNSName)},
            "ip": {str(a) for a in san.get_values_for_type(x509.IPAddress)}}


def _host_matches(host: str, names: dict[str, set[str]]) -> bool:
    host = host.strip("[]").lower()
    try:
        return str(ipaddress.ip_address(host)) in names["ip"]
    except ValueError:
        return host in names["dns"] or any(d.startswith("*.") and host.split(".", 1)[-1] == d[2:]
                                           for d in names["dns"])


def _session_channel_unsecured() -> bool:
    """True when the CreateSession being validated came over a SecurityMode None channel.

    asyncua calls the certificate validator from CreateSession without telling which channel the
    request came on: our servers' processor says it (``server_sessions.request_channel_mode``);
    elsewhere asyncua's UaProcessor, a caller a few frames up, holds the channel's policy."""
    from .server_sessions import request_channel_mode

    mode = request_channel_mode()
    if mode is not None:
        return mode == ua.MessageSecurityMode.None_
    frame = sys._getframe(1)
    for _ in range(12):
        frame = frame.f_back
        if frame is None:
            break
        owner = frame.f_locals.get("self")
        policy = getattr(getattr(owner, "_connection", None), "security_policy", None)
        if policy is not None:
            return policy.Mode == ua.MessageSecurityMode.None_
    return False
