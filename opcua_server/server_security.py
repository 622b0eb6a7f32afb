"""Security of every OPC UA server the project runs (the simulated PLC, the training server, the
operator server of ``pilot run``): endpoints, certificates, users, and what a client may do.

Endpoints (``--security`` / PILOT_OPCUA_SERVER_SECURITY, ``--operator-security`` /
PILOT_OPERATOR_SECURITY): a comma list of ``None``, ``Sign``, ``SignAndEncrypt`` (these two with
Basic256Sha256) or ``POLICY:MODE`` with POLICY one of Basic256Sha256, Aes128_Sha256_RsaOaep,
Aes256_Sha256_RsaPss and MODE Sign or SignAndEncrypt; ``secure`` is every policy with both modes.

``secure_server(server, security)`` sets a server up before ``start()``:

- the application instance certificate from the PKI folder (created on first use, logged with its
  path and SHA-256 fingerprint) and the ApplicationUri it names;
- client certificates checked by ``TrustList(pki, "client")``: trust, validity period, ApplicationUri;
- the users of ``security.users`` (roles viewer < operator < engineer) and anonymous sessions only
  when allowed (``allow_anonymous`` None: only when no users are configured); no client is ever
  asyncua's Admin (the role of the server's own internal session);
- every request served by the session its AuthenticationToken names (``server_sessions``), failed
  logins answered late (exponential back-off per client address);
- a password sent readable (not encrypted with the server's key) is refused with
  BadIdentityTokenRejected unless the channel is SignAndEncrypt, or the server has no certificate
  at all (a None-only quick start, warned about at start): the server never accepts a password in
  clear when it had offered to have it encrypted;
- a permission ruleset: read, browse, subscribe and write requests for every session, method calls
  only when ``call_allowed(user)``, AddNodes / DeleteNodes / AddReferences / DeleteReferences for
  no client at all;
- writes by clients: BadNotWritable for a Variable without CurrentWrite in its AccessLevel, for any
  attribute but Value, and for every node of namespace 0 (the server's own objects), whatever the
  role; what remains is decided by the server's own write handler and asyncua's UserAccessLevel.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from asyncua import Server, ua
from asyncua.common.utils import ServiceError
from asyncua.crypto.permission_rules import User, UserRole

from .security import (
    Pki,
    SecurityError,
    TrustList,
    certificate_uri,
    ensure_certificate,
)
from .server_sessions import (
    BackoffPolicy,
    LoginBackoff,
    current_user,
    install_session_binding,
    request_channel_mode,
)
from .tagmap import Role
from .users import ReadForAllRuleset, RoleUserManager, UserDirectory

log = logging.getLogger(__name__)

SERVER_SECURITY_ENV = "PILOT_OPCUA_SERVER_SECURITY"
PKI_ENV = "PILOT_OPCUA_PKI"
ANONYMOUS_ENV = "PILOT_OPCUA_ANONYMOUS"
DEFAULT_PKI = Path("pki")
POLICIES = {  # our name -> asyncua's SecurityPolicyType prefix
    "Basic256Sha256": "Basic256Sha256",
    "Aes128_Sha256_RsaOaep": "Aes128Sha256RsaOaep",
    "Aes256_Sha256_RsaPss": "Aes256Sha256RsaPss",
}
MODES = ("Sign", "SignAndEncrypt")
NONE = ("None", "None")
ALLOWED = ("None, Sign, SignAndEncrypt, secure, or POLICY:MODE with POLICY one of "
           f"{', '.join(POLICIES)} and MODE one of {', '.join(MODES)}")

__all__ = [
    "ALLOWED", "BackoffPolicy", "ServerSecurity", "current_user", "parse_endpoints", "policy_type", "role_of",
    "secure_server", "server_security_from_env",
]


@dataclass
class ServerSecurity:
    """Which endpoints a server opens and who may log in. Secure endpoints need ``pki``."""

    endpoints: tuple[tuple[str, str], ...] = (NONE,)  # (policy, mode) pairs; ("None", "None") is open
    pki: Pki | None = None
    users: UserDirectory = field(default_factory=UserDirectory)
    allow_anonymous: bool | None = None  # None: only when no users are configured
    app_uri: str | None = None  # of a certificate created on first use (default: urn:HOST:pilot-line)
    login_backoff: BackoffPolicy = field(default_factory=BackoffPolicy)

    @property
    def secure(self) -> bool:
        return any(ep != NONE for ep in self.endpoints)

    @property
    def anonymous(self) -> bool:
        """Whether anonymous sessions are accepted."""
        return len(self.users) == 0 if self.allow_anonymous is None else self.allow_anonymous

    def describe(self) -> str:
        return ",".join("None" if ep == NONE else f"{ep[0]}:{ep[1]}" for ep in self.endpoints)

    def check(self) -> None:
        """SecurityError for settings no client could use (before anything is started)."""
        if not self.anonymous and len(self.users) == 0:
            raise SecurityError("anonymous sessions are off and no users are configured: nobody could log in "
                                "(set PILOT_OPCUA_USERS or PILOT_OPCUA_SECRETS, or accept anonymous sessions)")
        if self.secure and self.pki is None:
            raise SecurityError(f"secure endpoints ({self.describe()}) need a PKI folder: --pki DIR or {PKI_ENV}")


def parse_endpoints(spec: str) -> tuple[tuple[str, str], ...]:
    """``"None,SignAndEncrypt,Aes256_Sha256_RsaPss:Sign"`` -> (policy, mode) pairs, in order,
    without repeats; SecurityError naming what is allowed."""
    out: list[tuple[str, str]] = []
    items = [s.strip() for s in str(spec).split(",") if s.strip()]
    if not items:
        raise SecurityError(f"no endpoint given in {spec!r}: use a comma list of {ALLOWED}")
    for item in items:
        if item == "None":
            out.append(NONE)
        elif item in MODES:
            out.append(("Basic256Sha256", item))
        elif item == "secure":
            out += [(p, m) for p in POLICIES for m in MODES]
        else:
            policy, _, mode = item.partition(":")
            if policy not in POLICIES or mode not in MODES:
                raise SecurityError(f"unknown endpoint {item!r}: use a comma list of {ALLOWED}")
            out.append((policy, mode))
    return tuple(dict.fromkeys(out))


def policy_type(endpoint: tuple[str, str]) -> ua.SecurityPolicyType:
    """asyncua's SecurityPolicyType of a (policy, mode) pair."""
    if endpoint == NONE:
        return ua.SecurityPolicyType.NoSecurity
    policy, mode = endpoint
    return ua.SecurityPolicyType[f"{POLICIES[policy]}_{mode}"]


def _flag(value: str, source: str) -> bool | None:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    if v in ("", "auto"):
        return None
    raise SecurityError(f"{source}={value!r}: use 1 (accept anonymous sessions), 0 (refuse them) or auto "
                        "(accept them only when no users are configured)")


def server_security_from_env(environ: Mapping[str, str] | None = None, *, spec: str | None = None,
                             pki: Path | str | Pki | None = None, allow_anonymous: bool | None = None,
                             spec_env: str = SERVER_SECURITY_ENV, default_spec: str = "None") -> ServerSecurity:
    """The server's security from explicit values, else the environment: endpoints (``spec``, else
    ``spec_env``, else ``default_spec``), PKI folder (``pki``, else PILOT_OPCUA_PKI, else ``pki`` in
    the working directory when an endpoint is secure), users (PILOT_OPCUA_USERS / PILOT_OPCUA_SECRETS,
    minimum password length PILOT_OPCUA_MIN_PASSWORD_LENGTH) and anonymous access (PILOT_OPCUA_ANONYMOUS:
    1, 0 or auto). Raises SecurityError with the operator's sentence."""
    env = os.environ if environ is None else environ
    endpoints = parse_endpoints(spec if spec is not None else env.get(spec_env) or default_spec)
    if pki is None and env.get(PKI_ENV):
        pki = env[PKI_ENV]
    if pki is None and any(ep != NONE for ep in endpoints):
        pki = DEFAULT_PKI
    if allow_anonymous is None and env.get(ANONYMOUS_ENV) is not None:
        allow_anonymous = _flag(env[ANONYMOUS_ENV], ANONYMOUS_ENV)
    return ServerSecurity(endpoints=endpoints, pki=pki if isinstance(pki, Pki) or pki is None else Pki(Path(pki)),
                          users=UserDirectory.from_env(env), allow_anonymous=allow_anonymous)


def role_of(security: ServerSecurity, user: User | None) -> Role:
    """The project's role of an asyncua user: ANONYMOUS for anonymous sessions and for None;
    asyncua's Admin is the server's own internal session (no client gets it) and counts as engineer."""
    if user is None:
        return Role.ANONYMOUS
    if user.role == UserRole.Admin:
        return Role.ENGINEER
    if user.role == UserRole.Anonymous or user.name is None:
        return Role.ANONYMOUS
    return security.users.role_of(user.name)


async def secure_server(server: Server, security: ServerSecurity, *,
                        call_allowed: Callable[[User], bool] | None = None) -> None:
    """Set up ``server`` (after ``init()``, before ``start()``) as the module docstring says."""
    security.check()
    if security.pki is not None:
        await _load_certificate(server, security)
    server.iserver.allow_remote_admin = False
    server.iserver.set_user_manager(RoleUserManager(security.users))
    server.set_security_policy([policy_type(ep) for ep in security.endpoints],
                               permission_ruleset=ReadForAllRuleset(call_allowed=call_allowed))
    tokens = ([ua.UserNameIdentityToken] if len(security.users) else []) + (
        [ua.AnonymousIdentityToken] if security.anonymous else [])
    server.set_identity_tokens(tokens)
    service = server.iserver.attribute_service
    service.write = guarded_write(server, service.write)
    server.iserver.decrypt_user_token = no_readable_passwords(server, server.iserver.decrypt_user_token)
    install_session_binding(server, LoginBackoff(security.login_backoff))
    if len(security.users) and security.pki is None:
        log.warning("users log in over %s without a server certificate: their passwords cross the network "
                    "in clear; give a PKI folder and a secure endpoint", security.describe())


async def _load_certificate(server: Server, security: ServerSecurity) -> None:
    pki = security.pki
    ensure_certificate(pki, security.app_uri)
    pki.check()
    await server.set_application_uri(certificate_uri(pki.cert))
    await server.load_certificate(str(pki.cert))
    await server.load_private_key(str(pki.key))
    server.set_certificate_validator(TrustList(pki, "client"))


def no_readable_passwords(server: Server, decrypt):
    """``iserver.decrypt_user_token`` refusing a password token that is not encrypted when the channel
    does not encrypt either, on a server that has a certificate (so could have had it encrypted)."""
    def checked(isession, token: ua.UserNameIdentityToken):
        if (not token.EncryptionAlgorithm and server.iserver.certificate is not None
                and request_channel_mode() != ua.MessageSecurityMode.SignAndEncrypt):
            log.debug("refused a readable password of user %r", token.UserName)
            raise ServiceError(ua.StatusCodes.BadIdentityTokenRejected)
        return decrypt(isession, token)
    return checked


def guarded_write(server: Server, write):
    """``attribute_service.write`` that refuses, for clients (every user but the internal Admin),
    what no role may write: BadNodeIdUnknown for a missing node, BadNotWritable for namespace 0,
    for attributes other than Value and for Variables without CurrentWrite; the rest goes to ``write``."""
    aspace = server.iserver.aspace

    def verdict(wv: ua.WriteValue) -> int | None:
        if wv.NodeId not in aspace:
            return ua.StatusCodes.BadNodeIdUnknown
        if wv.NodeId.NamespaceIndex == 0 or wv.AttributeId != ua.AttributeIds.Value:
            return ua.StatusCodes.BadNotWritable
        level = aspace.read_attribute_value(wv.NodeId, ua.AttributeIds.AccessLevel)
        if level.Value is None or level.Value.Value is None or not (
                level.Value.Value & ua.AccessLevel.CurrentWrite.mask):
            return ua.StatusCodes.BadNotWritable
        return None

    async def guarded(params: ua.WriteParameters, user: User = User(role=UserRole.Admin)) -> list[ua.StatusCode]:
        if user.role == UserRole.Admin:
            return await write(params, user=user)
        results: list[ua.StatusCode | None] = [None] * len(params.NodesToWrite)
        rest = []
        for i, wv in enumerate(params.NodesToWrite):
            code = verdict(wv)
            if code is None:
                rest.append(i)
            else:
                results[i] = ua.StatusCode(code)
        if rest:
            sub = ua.WriteParameters(NodesToWrite=[params.NodesToWrite[i] for i in rest])
            for i, r in zip(rest, await write(sub, user=user)):
                results[i] = r
        return results  # type: ignore[return-value]

    return guarded

