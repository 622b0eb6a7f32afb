"""What an OPC UA server says it is: a digital twin (a simulated PLC of this project) or a plant PLC.

The session rule of the guard (``controllers.guard.check_session``: a training or standalone
session never writes to a live PLC) needs the *target* of a run. It is decided from the server,
never from a flag: a simulated PLC (``PlcServer``) marks itself with ``mark_as_twin`` — its
``Server.ServerStatus.BuildInfo.ProductUri`` and its ApplicationDescription's ProductUri are
``TWIN_PRODUCT_URI`` — and ``decide_target`` reads that back from every PLC of the run. Over a
secured channel the answer comes signed with the server's certificate, which the client checked
against its trust list before the session (``client_security``); over a None channel it is the
server's unauthenticated word, and the log says so. A server that cannot be reached or does not
say "twin" is a live PLC: a training session refuses to start against it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone

from asyncua import Server, ua

from controllers.guard import LiveWriteForbidden

from .client_security import ClientSecurity, connect_client

log = logging.getLogger(__name__)
TWIN_PRODUCT_URI = "urn:pilot-line:twin"
MANUFACTURER = "pilot-line"


async def mark_as_twin(server: Server, name: str, version: str = "1") -> None:
    """Say, in the address space and the endpoint descriptions, that ``server`` is a digital twin
    (call after ``init`` and before ``start``)."""
    server.product_uri = TWIN_PRODUCT_URI
    await server.set_build_info(TWIN_PRODUCT_URI, MANUFACTURER, f"{name} (digital twin)", version, "0",
                                datetime.now(timezone.utc))


@dataclass(frozen=True)
class ServerIdentity:
    endpoint: str
    product_uri: str
    product_name: str
    secured: bool  # the answer came over a signed channel (from the certificate-checked server)

    @property
    def twin(self) -> bool:
        return self.product_uri == TWIN_PRODUCT_URI


async def identify(endpoint: str, security: ClientSecurity) -> ServerIdentity:
    """Connect as ``security`` says and read the server's BuildInfo."""
    client = await connect_client(endpoint, security, name="pilot-line identify")
    try:
        uri = await client.get_node(ua.NodeId(ua.ObjectIds.Server_ServerStatus_BuildInfo_ProductUri)).read_value()
        name = await client.get_node(ua.NodeId(ua.ObjectIds.Server_ServerStatus_BuildInfo_ProductName)).read_value()
        secured = client.security_policy.Mode != ua.MessageSecurityMode.None_
    finally:
        await client.disconnect()
    return ServerIdentity(endpoint, uri or "", name or "", secured)


async def decide_target(endpoints: Iterable[str], security: ClientSecurity, session: str) -> str:
    """``"live"`` for a live session (it may drive a twin or a plant); for any other session
    ``"twin"`` when every endpoint identifies itself as a twin, else ``LiveWriteForbidden`` naming
    the one that does not (or cannot be asked)."""
    if session == "live":
        return "live"
    for endpoint in endpoints:
        try:
            who = await identify(endpoint, security)
        except (OSError, ua.UaError) as exc:  # TimeoutError included
            raise LiveWriteForbidden(
                f"a {session} session can never write to a live PLC endpoint, and {endpoint} cannot be asked "
                f"whether it is a twin ({exc or type(exc).__name__}): start the served session first "
                "(pilot train serve)") from None
        if not who.twin:
            raise LiveWriteForbidden(
                f"a {session} session can never write to a live PLC endpoint: {endpoint} identifies itself as "
                f"{who.product_name or 'a server'} ({who.product_uri or 'no ProductUri'}), not as a twin")
        log.info("%s is a twin (%s, BuildInfo read over %s)", endpoint, who.product_name,
                 "a signed channel" if who.secured else "an unsecured channel: its own word")
    return "twin"
