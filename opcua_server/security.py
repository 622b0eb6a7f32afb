"""OPC UA security: application instance certificates, the trust list, users and roles.

PKI folder layout (``pilot opcua certs --pki DIR``)::

    DIR/own/cert.der            this application's certificate (DER, self-signed, 2048-bit RSA, SHA-256)
    DIR/own/cert.pem            the same in PEM (for stacks that want PEM)
    DIR/own/private/key.pem     its private key (PEM, mode 0600)
    DIR/trusted/                peer certificates we trust (DER or PEM), one file each
    DIR/rejected/               peers we refused, saved so an operator can move them to trusted/

Trust is by exact certificate (SHA-256 fingerprint of the DER), re-read at every handshake, so
moving a file into ``trusted/`` takes effect without a restart. An untrusted peer is refused
with BadCertificateUntrusted and one log line naming the file to trust.

Users come from the environment, never from the plant YAML: ``PILOT_OPCUA_USERS`` holds entries
``name:role:password`` separated by ``;`` or newlines, and ``PILOT_OPCUA_SECRETS`` may name a file
with one such entry per line (``#`` comments). Roles: viewer, operator, engineer. Passwords are kept
only as salted PBKDF2 hashes in memory and never logged. A client's own credentials come from
``PILOT_OPCUA_USER`` / ``PILOT_OPCUA_PASSWORD``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import ipaddress
import logging
import os
import re
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from asyncua import ua
from asyncua.common.utils import ServiceError
from asyncua.crypto import cert_gen
from asyncua.crypto.permission_rules import (
    USER_TYPES,
    PermissionRuleset,
    User,
    UserRole,
)
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .tagmap import Role

log = logging.getLogger(__name__)

USERS_ENV = "PILOT_OPCUA_USERS"
SECRETS_ENV = "PILOT_OPCUA_SECRETS"
CLIENT_USER_ENV = "PILOT_OPCUA_USER"
CLIENT_PASSWORD_ENV = "PILOT_OPCUA_PASSWORD"
SECURITY_MODES = ("None", "Sign", "SignAndEncrypt")


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
        out = set()
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
    request came on; its UaProcessor (a caller a few frames up) holds the channel's policy."""
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


# -- users and roles -------------------------------------------------------------------------
def _hash(password: str, salt: bytes) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", password.encode(), salt, 20_000)


class UserDirectory:
    """Username -> (salted hash, role). Built from the environment; never holds plain passwords."""

    def __init__(self) -> None:
        self._users: dict[str, tuple[bytes, bytes, Role]] = {}

    def add(self, name: str, password: str, role: Role | str) -> None:
        if not name or not password:
            raise SecurityError("a user needs a name and a non-empty password")
        salt = os.urandom(16)
        self._users[name] = (salt, _hash(password, salt), Role.parse(role) if isinstance(role, str) else role)

    def __len__(self) -> int:
        return len(self._users)

    def names(self) -> list[str]:
        return sorted(self._users)

    def role_of(self, name: str | None) -> Role:
        if name is None or name not in self._users:
            return Role.ANONYMOUS
        return self._users[name][2]

    def authenticate(self, name: str, password: str | bytes | None) -> Role | None:
        entry = self._users.get(name)
        if entry is None or password is None:
            return None
        if isinstance(password, bytes):
            password = password.decode("utf-8", "replace")
        salt, digest, role = entry
        return role if hmac.compare_digest(digest, _hash(password, salt)) else None

    @classmethod
    def parse(cls, text: str, source: str) -> UserDirectory:
        users = cls()
        for n, raw in enumerate(re.split(r"[;\n]", text), start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split(":", 2)
            if len(parts) != 3:
                raise SecurityError(f"{source}, entry {n}: expected name:role:password")
            name, role, password = (p.strip() for p in parts)
            try:
                users.add(name, password, role)
            except ValueError as exc:
                raise SecurityError(f"{source}, entry {n} ({name}): {exc}") from None
        return users

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> UserDirectory:
        env = os.environ if environ is None else environ
        users = cls()
        if env.get(USERS_ENV):
            users._users.update(cls.parse(env[USERS_ENV], USERS_ENV)._users)
        if env.get(SECRETS_ENV):
            path = Path(env[SECRETS_ENV])
            if not path.is_file():
                raise SecurityError(f"{SECRETS_ENV} names {path}, which is not a file")
            users._users.update(cls.parse(path.read_text(), str(path))._users)
        return users


class RoleUserManager:
    """asyncua user manager: anonymous sessions get the Anonymous role, known users a named User;
    a wrong password is refused at ActivateSession (BadUserAccessDenied)."""

    def __init__(self, users: UserDirectory):
        self.users = users

    def get_user(self, iserver, username=None, password=None, certificate=None):
        if username is None:
            return User(role=UserRole.Anonymous)
        role = self.users.authenticate(username, password)
        if role is None:
            log.warning("refused login for user %r (unknown user or wrong password)", username)
            return None
        return User(role=UserRole.User, name=username)


CALL_REQUEST = ua.NodeId(ua.ObjectIds.CallRequest_Encoding_DefaultBinary)


class ReadForAllRuleset(PermissionRuleset):
    """Every session may use the ordinary services (read, browse, subscribe, write requests);
    whether a write may change a tag is decided per item by role in the PLC server. Method calls
    (the instructor's controls) need ``call_allowed(user)`` when it is given: refused with
    BadUserAccessDenied otherwise."""

    def __init__(self, call_allowed=None) -> None:
        self._allowed = {ua.NodeId(i) for i in USER_TYPES}
        self._call_allowed = call_allowed

    def check_validity(self, user, action_type_id, body) -> bool:
        if action_type_id == CALL_REQUEST and self._call_allowed is not None:
            return bool(self._call_allowed(user))
        return action_type_id in self._allowed


def client_credentials_from_env(environ: Mapping[str, str] | None = None) -> tuple[str | None, str | None]:
    env = os.environ if environ is None else environ
    return env.get(CLIENT_USER_ENV) or None, env.get(CLIENT_PASSWORD_ENV) or None
