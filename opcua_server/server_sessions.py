"""Sessions of every OPC UA server the project runs: each request served by the session its
AuthenticationToken names, and failed logins answered late.

**One session per request.** asyncua's ``UaProcessor`` keeps one ``session`` per connection: the
newest session created on a secure channel would serve every later request on that channel,
whatever AuthenticationToken the request carries (an anonymous session opened beside an operator's
would write as the operator, and the other way round). ``SessionBoundProcessor`` resolves the
session of every request from ``RequestHeader.AuthenticationToken`` before the permission check and
the service: an unknown or closed token, or a session bound to another channel, answers
BadSessionIdInvalid; ActivateSession activates the session the token names (a session of another
channel moves to this one, as OPC UA Part 4, 6.7 allows, when the new channel's client certificate
is the one the session was created with: BadSecurityChecksFailed otherwise). ``current_user()`` is the user of the
request being served; it is visible in ``async`` method callbacks (they run in the request's task;
synchronous callbacks run in asyncua's thread pool and do not see it).

**Failed logins.** An ActivateSession refused for its credentials is answered only after a delay
that doubles with every failure from the same client address (``BackoffPolicy``: 0.1 s doubling
to 3 s, below the 4 s request timeout clients commonly use, so a mistyped password still gets its
answer; forgotten after a success or 60 s without failures). The delay is awaited, never blocking
the event loop, and delayed answers to one address are serialised, so opening many connections
does not multiply the guessing rate. One WARNING per burst of failures, not one per try.

**How it is installed.** asyncua builds its ``BinaryServer`` (the protocol factory that creates a
``UaProcessor`` per connection) inside ``Server.start()``. ``install_session_binding(server, ...)``
replaces ``start`` on that one server object with the same steps (asyncua 2.1's ``Server.start``)
building ``SessionBoundBinaryServer`` instead; no asyncua class is patched, other servers in the
process are untouched, and installing twice is harmless.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import socket
import time
from dataclasses import dataclass

from asyncua import Server, ua
from asyncua.common.utils import ServiceError
from asyncua.crypto import uacrypto
from asyncua.crypto.permission_rules import User
from asyncua.server.binary_server_asyncio import BinaryServer, OPCUAProtocol
from asyncua.server.internal_session import InternalSession, SessionState
from asyncua.server.uaprocessor import UaProcessor

log = logging.getLogger(__name__)

_CURRENT_USER: contextvars.ContextVar[User | None] = contextvars.ContextVar("opcua_current_user", default=None)
_CHANNEL_MODE: contextvars.ContextVar[ua.MessageSecurityMode | None] = contextvars.ContextVar(
    "opcua_channel_mode", default=None)
_OWNER = "_pilot_channel"  # attribute set on an InternalSession: the processor (channel) it is bound to
_CREATOR_CERT = "_pilot_client_certificate"  # ... and the client certificate of the channel that created it
_INSTALLED = "_pilot_session_binding"


def _nid(i: int) -> ua.NodeId:
    return ua.NodeId(i)


SESSIONLESS = frozenset(_nid(i) for i in (
    ua.ObjectIds.CreateSessionRequest_Encoding_DefaultBinary,
    ua.ObjectIds.GetEndpointsRequest_Encoding_DefaultBinary,
    ua.ObjectIds.FindServersRequest_Encoding_DefaultBinary,
    ua.ObjectIds.RegisterServerRequest_Encoding_DefaultBinary,
    ua.ObjectIds.RegisterServer2Request_Encoding_DefaultBinary,
    ua.ObjectIds.CloseSecureChannelRequest_Encoding_DefaultBinary,
))
CREATE_SESSION = _nid(ua.ObjectIds.CreateSessionRequest_Encoding_DefaultBinary)
ACTIVATE_SESSION = _nid(ua.ObjectIds.ActivateSessionRequest_Encoding_DefaultBinary)
LOGIN_FAILURES = (ua.StatusCodes.BadUserAccessDenied, ua.StatusCodes.BadIdentityTokenInvalid)


def current_user() -> User | None:
    """The authenticated user of the request being served (None outside a client request)."""
    return _CURRENT_USER.get()


def request_channel_mode() -> ua.MessageSecurityMode | None:
    """The security mode of the channel the request being served came on (None outside a request)."""
    return _CHANNEL_MODE.get()


# -- failed logins ---------------------------------------------------------------------------
@dataclass(frozen=True)
class BackoffPolicy:
    """Delay of the n-th failed login in a burst: ``min(first_s * 2**(n-1), max_s)``; a burst ends
    after a success or ``quiet_s`` without failures. ``first_s = 0`` turns the delay off."""

    first_s: float = 0.1
    max_s: float = 3.0
    quiet_s: float = 60.0
    warn_after: int = 3


@dataclass
class _Burst:
    first: float
    last: float
    failures: int = 0
    warned: bool = False


class LoginBackoff:
    """Failed logins counted per client address, each answered after its delay."""

    def __init__(self, policy: BackoffPolicy | None = None, clock=time.monotonic):
        self.policy = policy or BackoffPolicy()
        self._clock = clock
        self._bursts: dict[str, _Burst] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def failures(self, peer: str) -> int:
        burst = self._bursts.get(peer)
        return 0 if burst is None else burst.failures

    def record_failure(self, peer: str) -> float:
        """Count one failed login from ``peer``; returns how long to delay its answer (s)."""
        now, p = self._clock(), self.policy
        if p.first_s <= 0:
            return 0.0
        self._forget_quiet(now)
        burst = self._bursts.get(peer)
        if burst is None:
            burst = self._bursts[peer] = _Burst(first=now, last=now)
        burst.failures += 1
        burst.last = now
        delay = min(p.first_s * 2 ** (burst.failures - 1), p.max_s)
        if burst.failures >= p.warn_after and not burst.warned:
            burst.warned = True
            log.warning("%d failed logins from %s in the last %.1f s; delaying answers by %.1f s (doubling up "
                        "to %g s while they go on)", burst.failures, peer, now - burst.first, delay, p.max_s)
        return delay

    def record_success(self, peer: str) -> None:
        self._end(peer)

    def _end(self, peer: str) -> None:
        burst = self._bursts.pop(peer, None)
        if burst is not None and burst.warned:
            log.info("failed logins from %s ended: %d in %.1f s", peer, burst.failures, burst.last - burst.first)

    def _forget_quiet(self, now: float) -> None:
        for peer in [k for k, b in self._bursts.items() if now - b.last > self.policy.quiet_s]:
            self._end(peer)

    async def delay(self, peer: str, seconds: float) -> None:
        """Wait ``seconds`` before answering ``peer``; answers to one address wait one after another."""
        if seconds <= 0:
            return
        lock = self._locks.setdefault(peer, asyncio.Lock())
        async with lock:
            await asyncio.sleep(seconds)
        if not lock.locked() and peer not in self._bursts:
            self._locks.pop(peer, None)


# -- per-request sessions --------------------------------------------------------------------
class SessionBoundProcessor(UaProcessor):
    """asyncua's processor with the session of each request taken from its AuthenticationToken."""

    def __init__(self, internal_server, transport, limits, backoff: LoginBackoff):
        super().__init__(internal_server, transport, limits)
        self.backoff = backoff
        self.peer = str(self.name[0]) if isinstance(self.name, tuple) else str(self.name)
        self._sessions: list[InternalSession] = []

    async def _process_message(self, typeid, requesthdr, seqhdr, body):
        mode = _CHANNEL_MODE.set(self._connection.security_policy.Mode)
        try:
            return await self._dispatch(typeid, requesthdr, seqhdr, body)
        finally:
            _CHANNEL_MODE.reset(mode)

    async def _dispatch(self, typeid, requesthdr, seqhdr, body):
        if typeid in SESSIONLESS:
            done = await super()._process_message(typeid, requesthdr, seqhdr, body)
            if typeid == CREATE_SESSION and self.session is not None:
                setattr(self.session, _CREATOR_CERT, self._connection.security_policy.peer_certificate)
                self._bind(self.session)
            return done
        session = self.iserver.lookup_external_session(requesthdr.AuthenticationToken)
        if session is None or session.state == SessionState.Closed:
            raise ServiceError(ua.StatusCodes.BadSessionIdInvalid)
        if typeid == ACTIVATE_SESSION:
            try:
                return await self._activate(session, typeid, requesthdr, seqhdr, body)
            finally:
                self._drop_foreign()  # a refused move leaves no trace here
        if getattr(session, _OWNER, None) is not self:
            raise ServiceError(ua.StatusCodes.BadSessionIdInvalid)
        self.session = session
        token = _CURRENT_USER.set(session.user)
        try:
            return await super()._process_message(typeid, requesthdr, seqhdr, body)
        finally:
            _CURRENT_USER.reset(token)

    async def _activate(self, session, typeid, requesthdr, seqhdr, body):
        ours = getattr(session, _OWNER, None) is self
        if not ours and getattr(session, _CREATOR_CERT, None) != self._connection.security_policy.peer_certificate:
            raise ServiceError(ua.StatusCodes.BadSecurityChecksFailed)
        # a session of another channel: None lets asyncua's reconnect path move it (and its subscriptions) here
        self.session = session if ours else None
        try:
            done = await super()._process_message(typeid, requesthdr, seqhdr, body)
        except ServiceError as exc:
            if exc.code not in LOGIN_FAILURES:
                raise
            await self.backoff.delay(self.peer, self.backoff.record_failure(self.peer))
            response = ua.ServiceFault()  # answered here: asyncua would log an ERROR for every try
            response.ResponseHeader.ServiceResult = ua.StatusCode(exc.code)
            self.send_response(requesthdr.RequestHandle, seqhdr, response)
            return True
        self._bind(self.session)
        if self.session.user is not None and self.session.user.name is not None:
            self.backoff.record_success(self.peer)
        return done

    def _bind(self, session: InternalSession) -> None:
        setattr(session, _OWNER, self)
        self._sessions = [s for s in self._sessions if s is not session and s.state != SessionState.Closed]
        self._sessions.append(session)

    def _drop_foreign(self) -> None:
        """Forget a session bound to another channel (a refused move), so that nothing done here,
        such as closing on transport loss, touches it."""
        owner = getattr(self.session, _OWNER, None)
        if owner is not None and owner is not self:
            self.session = None

    async def close(self):
        """Transport lost: every session bound to this channel is closed as asyncua closes its one
        (unless it keeps subscriptions a client may transfer to a new channel); sessions of other
        channels are left alone."""
        self._drop_foreign()
        await super().close()
        for session in self._sessions:
            if session is self.session or getattr(session, _OWNER, None) is not self:
                continue
            self.session = session
            if session.state != SessionState.Closed and self._should_close_session_on_transport_loss():
                await session.close_session(True)


class SessionBoundProtocol(OPCUAProtocol):
    def __init__(self, *args, backoff: LoginBackoff, **kwargs):
        super().__init__(*args, **kwargs)
        self.backoff = backoff

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        if self.processor is not None:  # None: refused at max_connections
            self.processor = SessionBoundProcessor(self.iserver, self.transport, self.limits, self.backoff)
            self.processor.set_policies(self.policies)


class SessionBoundBinaryServer(BinaryServer):
    def __init__(self, *args, backoff: LoginBackoff, **kwargs):
        super().__init__(*args, **kwargs)
        self.backoff = backoff

    def _make_protocol(self) -> SessionBoundProtocol:
        return SessionBoundProtocol(iserver=self.iserver, policies=self._policies, clients=self.clients,
                                    closing_tasks=self.closing_tasks, limits=self.limits, backoff=self.backoff)


def install_session_binding(server: Server, backoff: LoginBackoff) -> None:
    """Make ``server`` (not yet started) serve each request by its own session, with ``backoff``
    for failed logins: ``start`` of this object runs asyncua 2.1's ``Server.start`` steps with
    ``SessionBoundBinaryServer``. Idempotent (the latest ``backoff`` wins)."""
    setattr(server, _INSTALLED, backoff)
    if getattr(server.start, "__self__", None) is None and getattr(server.start, _INSTALLED, False):
        return

    async def start() -> None:
        if server.iserver.certificate is not None:
            uacrypto.check_certificate(server.iserver.certificate, server._application_uri, socket.gethostname())
        await server._setup_server_nodes()
        await server.iserver.start()
        host, port = server._get_bind_socket_info()
        server.bserver = SessionBoundBinaryServer(server.iserver, host, port, server.limits,
                                                  backoff=getattr(server, _INSTALLED))
        server.bserver.set_policies(server._policies)
        try:
            await server.bserver.start()
        except Exception:
            await server.iserver.stop()
            raise

    setattr(start, _INSTALLED, True)
    server.start = start
