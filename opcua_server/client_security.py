"""The client face of OPC UA security: one setting (``ClientSecurity``) for every client of the
project (the bridge of ``pilot run``, ``pilot opcua browse``, ``pilot alarms``, the benchmarks),
and ``connect_client``, which connects an asyncua ``Client`` with it or refuses with one sentence.

``connect_client(url, security)``:

1. GetEndpoints over a None channel (discovery needs no security), then choose an endpoint: the
   most secure the server offers (SignAndEncrypt > Sign > None; then the server's SecurityLevel;
   then Aes256_Sha256_RsaPss > Aes128_Sha256_RsaOaep > Basic256Sha256) among those that accept
   our identity (user name or anonymous), unless policy and/or mode are pinned.
2. For a secured endpoint: our own certificate from ``pki`` (created on first use, logged with its
   path and SHA-256 fingerprint), and the server's certificate checked against the trust list
   before anything else is sent (trust, validity period, host name of the URL, ApplicationUri;
   ``security.TrustList``). Our own certificate is always trusted: ``pilot run`` and ``pilot
   alarms`` sharing one PKI folder are the same application. The same check is installed as
   asyncua's ``certificate_validator`` for the certificate the server presents in CreateSession.
3. A password that would cross the wire readable (a None channel, or a Sign channel whose user
   token policy does not encrypt) is refused unless ``allow_plaintext_password`` (then one WARNING).
4. Connect; a refusal by the server (our certificate, our user) becomes a ``SecurityError`` naming
   the OPC UA status code and what to do. Network problems stay ``OSError`` / ``TimeoutError``.

Environment (the same names as the CLI flags of ``pilot/cli_security.py``):
``PILOT_OPCUA_SECURITY_POLICY``, ``PILOT_OPCUA_SECURITY_MODE``, ``PILOT_OPCUA_PKI`` (default
``pki`` in the working directory), ``PILOT_OPCUA_USER``, ``PILOT_OPCUA_PASSWORD`` or
``PILOT_OPCUA_PASSWORD_FILE``, ``PILOT_OPCUA_ALLOW_PLAINTEXT_PASSWORD=1``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from asyncua import Client, ua
from asyncua.crypto import security_policies as sp
from asyncua.crypto import uacrypto

from .security import (
    Pki,
    SecurityError,
    TrustList,
    certificate_uri,
    default_app_uri,
    ensure_certificate,
    write_private,
)

log = logging.getLogger(__name__)

POLICY_ENV = "PILOT_OPCUA_SECURITY_POLICY"
MODE_ENV = "PILOT_OPCUA_SECURITY_MODE"
PKI_ENV = "PILOT_OPCUA_PKI"
USER_ENV = "PILOT_OPCUA_USER"
PASSWORD_ENV = "PILOT_OPCUA_PASSWORD"
PASSWORD_FILE_ENV = "PILOT_OPCUA_PASSWORD_FILE"
PLAINTEXT_ENV = "PILOT_OPCUA_ALLOW_PLAINTEXT_PASSWORD"
DEFAULT_PKI = Path("pki")
SESSION_TIMEOUT_MS = 600_000  # what asyncua servers grant at most; a larger request is revised with a warning

#: our names of the policies, most secure last (the rank among equal modes and levels)
POLICIES: dict[str, type[sp.SecurityPolicy]] = {
    "None": sp.SecurityPolicyNone,
    "Basic256Sha256": sp.SecurityPolicyBasic256Sha256,
    "Aes128_Sha256_RsaOaep": sp.SecurityPolicyAes128Sha256RsaOaep,
    "Aes256_Sha256_RsaPss": sp.SecurityPolicyAes256Sha256RsaPss,
}
MODES: dict[str, ua.MessageSecurityMode] = {
    "None": ua.MessageSecurityMode.None_,
    "Sign": ua.MessageSecurityMode.Sign,
    "SignAndEncrypt": ua.MessageSecurityMode.SignAndEncrypt,
}
POLICY_CHOICES = ("auto", *POLICIES)
MODE_CHOICES = ("auto", *MODES)
_POLICY_NAMES = {cls.URI: name for name, cls in POLICIES.items()}
_MODE_NAMES = {v: k for k, v in MODES.items()}
_USER_REFUSED = ("BadUserAccessDenied", "BadIdentityTokenInvalid", "BadIdentityTokenRejected")
_TRUE = ("1", "true", "yes", "on")


@dataclass(frozen=True)
class ClientSecurity:
    """How a client connects: policy and mode (``auto``: the most secure the server offers), the
    PKI folder (own certificate and key, trust list; None: ``pki`` in the working directory, used
    only when a secured endpoint is chosen), the user (None: anonymous) and whether a password may
    cross the wire readable. The password never shows in ``repr``."""

    policy: str = "auto"
    mode: str = "auto"
    pki: Pki | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    allow_plaintext_password: bool = False

    def __post_init__(self) -> None:
        if self.policy not in POLICY_CHOICES:
            raise SecurityError(f"security policy {self.policy!r} ({POLICY_ENV}) is not known: use one of "
                                f"{', '.join(POLICY_CHOICES)}")
        if self.mode not in MODE_CHOICES:
            raise SecurityError(f"security mode {self.mode!r} ({MODE_ENV}) is not known: use one of "
                                f"{', '.join(MODE_CHOICES)}")
        if (self.policy == "None") != (self.mode == "None") and "auto" not in (self.policy, self.mode):
            raise SecurityError(f"security policy {self.policy} cannot go with mode {self.mode}: policy None "
                                "goes with mode None only, and the other policies with Sign or SignAndEncrypt")
        if self.password and not self.username:
            raise SecurityError(f"a password is given but no user: set {USER_ENV} (--user)")
        if self.username and not self.password:
            raise SecurityError(f"user {self.username} has no password: set {PASSWORD_ENV} or "
                                f"{PASSWORD_FILE_ENV} (--password-file)")

    @property
    def pki_folder(self) -> Pki:
        return self.pki if self.pki is not None else Pki(DEFAULT_PKI)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides) -> ClientSecurity:
        """The setting from the environment; ``overrides`` (policy, mode, pki, username, password,
        password_file, allow_plaintext_password) win where they are not None."""
        env = os.environ if environ is None else environ
        given = {k: v for k, v in overrides.items() if v is not None}
        unknown = set(given) - {"policy", "mode", "pki", "username", "password", "password_file",
                                "allow_plaintext_password"}
        if unknown:
            raise TypeError(f"unknown ClientSecurity settings: {sorted(unknown)}")
        pki = given.get("pki", env.get(PKI_ENV) or DEFAULT_PKI)
        password_file = given.get("password_file", env.get(PASSWORD_FILE_ENV) or None)
        password = given.get("password")
        if password is None:
            password = (_read_password(Path(password_file)) if password_file
                        else env.get(PASSWORD_ENV) or None)
        plaintext = given.get("allow_plaintext_password",
                              env.get(PLAINTEXT_ENV, "").strip().lower() in _TRUE)
        return cls(policy=_choice(given.get("policy", env.get(POLICY_ENV) or "auto"), POLICY_CHOICES),
                   mode=_choice(given.get("mode", env.get(MODE_ENV) or "auto"), MODE_CHOICES),
                   pki=pki if isinstance(pki, Pki) else Pki(Path(pki)),
                   username=given.get("username", env.get(USER_ENV) or None),
                   password=password, allow_plaintext_password=bool(plaintext))

def _choice(value: str, choices: tuple[str, ...]) -> str:
    """``value`` spelt as in ``choices`` when it matches one but for case (else unchanged)."""
    return {c.lower(): c for c in choices}.get(str(value).strip().lower(), value)


def _read_password(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SecurityError(f"password file {path} does not exist ({PASSWORD_FILE_ENV} / --password-file)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SecurityError(f"cannot read password file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    password = text.rstrip("\r\n")
    if not password:
        raise SecurityError(f"password file {path} is empty")
    return password


# -- endpoint choice (pure) ----------------------------------------------------------------
def endpoint_name(ep: ua.EndpointDescription) -> str:
    """``Basic256Sha256/SignAndEncrypt`` (or the policy URI's fragment for a policy we do not use)."""
    policy = _POLICY_NAMES.get(ep.SecurityPolicyUri, (ep.SecurityPolicyUri or "").rpartition("#")[2])
    return f"{policy}/{_MODE_NAMES.get(ep.SecurityMode, str(ep.SecurityMode))}"


def _accepts(ep: ua.EndpointDescription, token_type: ua.UserTokenType) -> bool:
    return any(t.TokenType == token_type for t in ep.UserIdentityTokens or ())


def _rank(ep: ua.EndpointDescription) -> tuple[int, int, int]:
    order = list(POLICIES)
    return (list(MODES.values()).index(ep.SecurityMode), int(ep.SecurityLevel or 0),
            order.index(_POLICY_NAMES[ep.SecurityPolicyUri]))


def choose_endpoint(endpoints: Iterable[ua.EndpointDescription], security: ClientSecurity,
                    url: str = "the server") -> ua.EndpointDescription:
    """The most secure usable endpoint that matches the pinned policy / mode and accepts our
    identity; SecurityError naming what the server offers when there is none."""
    offered = [ep for ep in endpoints if (ep.EndpointUrl or "").startswith("opc.tcp")
               and ep.SecurityPolicyUri in _POLICY_NAMES and ep.SecurityMode in _MODE_NAMES]
    names = ", ".join(endpoint_name(ep) for ep in endpoints) or "no endpoints"
    fits = [ep for ep in offered
            if security.policy in ("auto", _POLICY_NAMES[ep.SecurityPolicyUri])
            and security.mode in ("auto", _MODE_NAMES[ep.SecurityMode])]
    if not fits:
        raise SecurityError(f"{url} offers no endpoint with security {security.policy}/{security.mode} "
                     f"(it offers {names})")
    token = ua.UserTokenType.UserName if security.username else ua.UserTokenType.Anonymous
    usable = [ep for ep in fits if _accepts(ep, token)]
    if not usable:
        who = f"user name login ({security.username})" if security.username else "anonymous sessions"
        hint = "" if security.username else f": give a user ({USER_ENV} / --user) and its password"
        raise SecurityError(f"{url} accepts no {who} on {', '.join(endpoint_name(ep) for ep in fits)}{hint}")
    return max(usable, key=_rank)


def password_exposed(ep: ua.EndpointDescription) -> bool:
    """True when a UserName token's password would cross the wire readable on this endpoint: a
    None channel, or a Sign channel whose user token policy does not encrypt it."""
    if ep.SecurityMode == ua.MessageSecurityMode.None_:
        return True
    if ep.SecurityMode == ua.MessageSecurityMode.SignAndEncrypt:
        return False
    tokens = [t for t in ep.UserIdentityTokens or () if t.TokenType == ua.UserTokenType.UserName]
    uri = (tokens[0].SecurityPolicyUri if tokens else None) or ep.SecurityPolicyUri
    return uri == sp.SecurityPolicyNone.URI


def check_password_channel(ep: ua.EndpointDescription, security: ClientSecurity, url: str) -> None:
    """Refuse (SecurityError) a password that would go readable, unless explicitly allowed."""
    if not security.password or not password_exposed(ep):
        return
    if not security.allow_plaintext_password:
        raise SecurityError(
            f"{url}: the password of user {security.username} would cross the wire readable on the "
            f"{endpoint_name(ep)} endpoint; use a secured endpoint (--security-mode SignAndEncrypt with a "
            f"PKI folder, --pki) or, on a closed test network only, --allow-plaintext-password")
    log.warning("sending the password of user %s readable over the %s endpoint of %s "
                "(--allow-plaintext-password)", security.username, endpoint_name(ep), url)


# -- certificates ---------------------------------------------------------------------------
def check_server_certificate(trust: TrustList, ep: ua.EndpointDescription, url: str) -> bytes:
    """The server certificate (DER) of the endpoint, checked; SecurityError with the sentence and
    the status code (an untrusted certificate is saved to ``rejected/``, the sentence says where to
    move it). The refusal is raised, not logged: the caller reports it once."""
    cert = uacrypto.x509_from_der(ep.ServerCertificate)
    if cert is None:
        raise SecurityError(f"{url} offers {endpoint_name(ep)} without a server certificate")
    verdict = trust.check(cert, ep.Server.ApplicationUri if ep.Server is not None else None)
    if verdict is not None:
        code, sentence = verdict
        if code == ua.StatusCodes.BadCertificateUntrusted:
            trust.pki.rejected.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_private(trust.rejected_path(cert), uacrypto.der_from_x509(cert), mode=0o644)
        raise SecurityError(f"{url}: {sentence} ({ua.StatusCode(code).name})")
    return uacrypto.der_from_x509(cert)


# -- connect --------------------------------------------------------------------------------
async def get_endpoints(url: str, timeout_s: float = 4.0) -> list[ua.EndpointDescription]:
    """GetEndpoints over a transient None channel."""
    probe = Client(url, timeout=timeout_s)
    return await asyncio.wait_for(probe.connect_and_get_server_endpoints(), timeout_s * 2)


async def connect_client(url: str, security: ClientSecurity, *, timeout_s: float = 4.0,
                         watchdog_s: float = 1.0, name: str = "pilot-line") -> Client:
    """A connected asyncua ``Client`` on the chosen endpoint, its server certificate validated;
    SecurityError (with the OPC UA status code name where the server answered one) when security
    refuses the connection; OSError / TimeoutError when the server cannot be reached."""
    endpoints = await get_endpoints(url, timeout_s)
    ep = choose_endpoint(endpoints, security, url)
    check_password_channel(ep, security, url)
    client = Client(url, timeout=timeout_s, watchdog_intervall=watchdog_s)
    client.name = client.description = name
    client.session_timeout = SESSION_TIMEOUT_MS
    trust = await _secure(client, ep, security, url)
    if security.username:
        client.set_user(security.username)
        client.set_password(security.password or "")
    try:
        await client.connect()
    except ua.UaStatusCodeError as exc:
        await _quiet_disconnect(client)
        raise _refusal(exc, url, security, trust) or exc
    except BaseException:
        await _quiet_disconnect(client)
        raise
    log.info("connected to %s (%s, user %s)", url, endpoint_name(ep), security.username or "anonymous")
    return client


async def _secure(client: Client, ep: ua.EndpointDescription, security: ClientSecurity,
                  url: str) -> TrustList | None:
    pki = security.pki_folder
    if ep.SecurityMode == ua.MessageSecurityMode.None_:
        client.application_uri = certificate_uri(pki.cert) if pki.cert.is_file() else default_app_uri()
        return None
    try:
        ensure_certificate(pki)
        pki.check()
    except OSError as exc:
        raise SecurityError(f"cannot create the application certificate in {pki.root}: "
                            f"{exc.strerror or exc}") from None
    trust = TrustList(pki, "server", host=urlparse(url).hostname)
    server_der = check_server_certificate(trust, ep, url)
    client.application_uri = certificate_uri(pki.cert)
    await client.set_security(POLICIES[_POLICY_NAMES[ep.SecurityPolicyUri]], str(pki.cert), str(pki.key),
                              server_certificate=server_der, mode=ep.SecurityMode)
    client.certificate_validator = trust
    return trust


def _refusal(exc: ua.UaStatusCodeError, url: str, security: ClientSecurity,
             trust: TrustList | None) -> SecurityError | None:
    """The operator's sentence for a status code the server (or our validator) answered."""
    status = ua.StatusCode(exc.code).name
    if trust is not None and trust.last_refusal:
        return SecurityError(f"{url}: {trust.last_refusal}")
    if status in _USER_REFUSED:
        return SecurityError(f"{url} refused user {security.username or 'anonymous'} ({status})")
    if status.startswith("BadCertificate") or status in ("BadSecurityChecksFailed", "BadSecurityPolicyRejected"):
        cert = security.pki_folder.cert
        return SecurityError(f"{url} refused our certificate ({status}): put our certificate {cert} into "
                             "the server's trusted folder (and check its validity and application URI)")
    return None


async def _quiet_disconnect(client: Client) -> None:
    try:
        await asyncio.wait_for(client.disconnect(), 2.0)
    except Exception:  # the connection is already broken; nothing more to release
        pass
