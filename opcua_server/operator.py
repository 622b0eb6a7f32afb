"""The operator face of the running control loop: an OPC UA server for consoles (``pilot alarms``,
an HMI) to acknowledge and shelve alarms and change loop modes, and the loop's estimates as variables.

Object ``Operator`` in namespace ``urn:pilot-line:operator``:

===================================  ==========  ==========================================
method (inputs)                      role        does
===================================  ==========  ==========================================
``List()``                           any         JSON of the alarm summary
``Acknowledge(alarm_id)``            operator    acknowledge one alarm
``AcknowledgeAll()``                 operator    acknowledge every alarm
``Shelve(alarm_id, duration_s)``     operator    shelve until ``duration_s`` of plant time
``Unshelve(alarm_id)``               operator    return a shelved alarm to service
``SetMode(loop, mode)``              engineer    manual / advisory / auto (bumpless)
``SetShelveLimit(seconds)``          engineer    the longest shelving allowed
``WhatIf(request)``                  engineer    fork the loop's estimate into twins (JSON
                                                 request) → ``ok: <id>``; runs off the loop
``WhatIfResult(id)``                 engineer    ``pending``, the result JSON, or ``error: ...``
===================================  ==========  ==========================================

Each action method answers one line (``ok ...`` or ``error: reason``); variables ``Alarms``
(the List JSON), ``Modes`` (JSON), ``Links`` (JSON: per PLC ``up``, ``since``, ``outages``,
``reconnects``, ``last_error``), ``Historian`` (JSON: the recorder's counters ``run``, ``recorded``,
``written``, ``spooled``, ``replayed``, ``dropped``, ``backlog``; ``{}`` without a recorder), one
Double ``PLC.<name>.LINK`` per PLC (1 up, 0 down) and one Double per published estimate
(``CELL1.CE.EST``, ...), all read-only: no client writes them, and no client adds or deletes nodes.

**Who.** The server is set up by ``secure_server`` (same endpoints, users and roles as the PLC
face); the operator is the user of the authenticated session (``current_user()``), never a
method argument. A caller below the method's role gets BadUserAccessDenied; a wrong number of
arguments BadArgumentsMissing / BadTooManyArguments, a wrong type BadInvalidArgument (with
BadTypeMismatch for the argument), all checked before anything runs.

**When.** An action never touches the loop from the OPC UA side. The method callbacks are
coroutines, so asyncua runs them on the event loop (not in its thread pool); each puts a request
on a queue and waits for its answer; the driver (``pilot.live.run_live``) calls ``drain()`` at the
start of each poll iteration, on the event loop, between ticks, which applies the requests in
order. A request not drained within ``drain_timeout_s`` answers "error: the control loop is not
running". Every action, applied or refused, goes into the ``AuditJournal``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlparse

from asyncua import Server, ua
from pydantic import ValidationError

from controllers.loop import ControlLoop, TickResult

from .audit import AuditEntry, AuditJournal
from .conditions import AlarmConditions
from .methods import MethodSpec, check_arguments
from .security import SecurityError
from .server_security import ServerSecurity, current_user, role_of, secure_server
from .tagmap import Role

log = logging.getLogger(__name__)
OPERATOR_NS = "urn:pilot-line:operator"
DEFAULT_OPERATOR_ENDPOINT = "opc.tcp://127.0.0.1:4850"  # beside the shipped line's PLCs (4840-4843)
LOOPBACK = ("127.0.0.1", "localhost", "::1")
NOT_RUNNING = "the control loop is not running"
S, D = ua.VariantType.String, ua.VariantType.Double
ALARM_ACTIONS = ("acknowledge", "shelve", "unshelve", "comment")  # actions on one alarm (its id first)


METHODS: tuple[MethodSpec, ...] = (
    MethodSpec("List", "list", (), Role.ANONYMOUS),
    MethodSpec("Acknowledge", "acknowledge", (("alarm_id", S),), Role.OPERATOR),
    MethodSpec("AcknowledgeAll", "acknowledge_all", (), Role.OPERATOR),
    MethodSpec("Shelve", "shelve", (("alarm_id", S), ("duration_s", D)), Role.OPERATOR),
    MethodSpec("Unshelve", "unshelve", (("alarm_id", S),), Role.OPERATOR),
    MethodSpec("SetMode", "set_mode", (("loop", S), ("mode", S)), Role.ENGINEER),
    MethodSpec("SetShelveLimit", "set_shelve_limit", (("seconds", D),), Role.ENGINEER),
    MethodSpec("WhatIf", "whatif", (("request", S),), Role.ENGINEER),
    MethodSpec("WhatIfResult", "whatif_result", (("id", S),), Role.ENGINEER),
)
WHATIF_ACTIONS = ("whatif", "whatif_result")  # answered here: they never touch the loop


def alarms_json(loop: ControlLoop) -> str:
    """The alarm summary then the shelved alarms (``AlarmManager.listing``), as JSON."""
    return json.dumps(loop.alarms.listing())


@dataclass
class OperatorRequest:
    spec: MethodSpec
    args: tuple
    user: str
    role: Role
    answer: asyncio.Future


class OperatorServer:
    """Acknowledge / shelve / modes over OPC UA methods, and the loop's estimates as variables.

    ``security``: endpoints, PKI and users (``ServerSecurity``); an endpoint off the loopback is
    refused while a None endpoint is served. ``audit``: where every action is journalled."""

    def __init__(self, loop: ControlLoop, endpoint: str, security: ServerSecurity, audit: AuditJournal, *,
                 drain_timeout_s: float = 5.0, links: Callable[[], dict] | None = None,
                 historian: Callable[[], dict] | None = None, whatif=None):
        host = urlparse(endpoint).hostname
        if host not in LOOPBACK and any(mode == "None" for _, mode in security.endpoints):
            raise SecurityError(f"the operator server serves {endpoint} off the loopback only without a None "
                             "endpoint: use --operator-security secure (or Sign / SignAndEncrypt endpoints)")
        self.loop, self.endpoint, self.security, self.audit = loop, endpoint, security, audit
        self.drain_timeout_s = drain_timeout_s
        self.links, self.historian = links, historian  # providers of the Links / Historian JSON
        self.whatif = whatif  # async request(text, user) -> str, result(id) -> str (pilot.whatif)
        self.server = Server()
        self.t = math.nan  # plant time of the newest snapshot: actions are journalled at it
        self._vars: dict[str, object] = {}
        self._pending: deque[OperatorRequest] = deque()

    async def start(self) -> None:
        s = self.server
        await s.init()
        s.set_endpoint(self.endpoint)
        s.set_server_name("pilot-line operator")
        await secure_server(s, self.security, call_allowed=lambda user: True)  # roles: per method, audited
        idx = self.idx = await s.register_namespace(OPERATOR_NS)
        self.obj = obj = await s.nodes.objects.add_object(ua.NodeId("Operator", idx),
                                                          ua.QualifiedName("Operator", idx))
        result = [ua.Argument(Name="result", DataType=ua.NodeId(S.value), ValueRank=-1)]
        for spec in METHODS:
            await obj.add_method(ua.NodeId(f"Operator.{spec.name}", idx), ua.QualifiedName(spec.name, idx),
                                 self._callback(spec), spec.arguments(), result)
        self._alarms = await obj.add_variable(ua.NodeId("Operator.Alarms", idx), ua.QualifiedName("Alarms", idx),
                                              alarms_json(self.loop), S)
        self._modes = await obj.add_variable(ua.NodeId("Operator.Modes", idx), ua.QualifiedName("Modes", idx),
                                             json.dumps(self.loop.modes), S)
        self._links = await obj.add_variable(ua.NodeId("Operator.Links", idx), ua.QualifiedName("Links", idx),
                                             self._json(self.links), S)
        self._historian = await obj.add_variable(ua.NodeId("Operator.Historian", idx),
                                                 ua.QualifiedName("Historian", idx), self._json(self.historian), S)
        self.conditions = AlarmConditions(s, idx, self.loop.alarms, self.security, self._submit, self._journal)
        await self.conditions.build()
        await s.start()
        await self.publish_conditions()
        log.info("operator server at %s (endpoints %s)", self.endpoint,
                 ", ".join(f"{p}:{m}" for p, m in self.security.endpoints))

    async def stop(self) -> None:
        """Stop serving; requests still queued are refused (and journalled) as not running."""
        while self._pending:
            req = self._pending.popleft()
            if not req.answer.done():
                self._journal(req.spec, req.args, req.user, req.role, f"refused: {NOT_RUNNING}")
                req.answer.set_result(f"error: {NOT_RUNNING}")
        await self.server.stop()

    async def publish(self, tick: TickResult) -> None:
        for name, v in tick.published.items():
            await self._variable(name, v)
        await self._alarms.write_value(alarms_json(self.loop), S)
        await self._modes.write_value(json.dumps(self.loop.modes), S)
        await self.publish_status()
        await self.publish_conditions()

    async def publish_conditions(self) -> int:
        """Emit the events of the alarm conditions that changed (after a tick, or after operator
        actions were applied between ticks); returns how many."""
        return await self.conditions.publish(self.t if math.isfinite(self.t) else time.time())

    async def publish_status(self) -> None:
        """Refresh ``Links``, ``Historian`` and the ``PLC.<name>.LINK`` variables (also between
        ticks: at a link transition while no PLC is up)."""
        links = self.links() if self.links else {}
        await self._links.write_value(json.dumps(links, default=str), S)
        await self._historian.write_value(self._json(self.historian), S)
        for name, st in links.items():
            await self._variable(f"PLC.{name}.LINK", 1.0 if st.get("up") else 0.0)

    async def _variable(self, name: str, v: float) -> None:
        node = self._vars.get(name)
        if node is None:
            node = self._vars[name] = await self.obj.add_variable(
                ua.NodeId(name, self.idx), ua.QualifiedName(name, self.idx), float(v), D)
        await node.write_value(float(v), D)

    @staticmethod
    def _json(provider: Callable[[], dict] | None) -> str:
        return json.dumps(provider() if provider else {}, default=str)

    # -- the OPC UA side: check, then queue -----------------------------------------------
    def _callback(self, spec: MethodSpec) -> Callable:
        async def call(parent, *variants: ua.Variant):
            return await self._call(spec, variants)
        return call

    async def _call(self, spec: MethodSpec, variants: tuple[ua.Variant, ...]):
        user = current_user()
        role = role_of(self.security, user)
        who = user.name if user is not None and user.name else "anonymous"
        problem = check_arguments(spec, variants)
        if spec.name == "List":
            return problem[0] if problem else [ua.Variant(alarms_json(self.loop), S)]
        if problem is not None:
            answer, reason = problem
            self._journal(spec, tuple(v.Value for v in variants), who, role, f"refused: {reason}")
            return answer
        args = tuple(v.Value for v in variants)
        if role < spec.role:
            self._journal(spec, args, who, role, f"refused: {spec.name} needs the {spec.role.name.lower()} role")
            return ua.StatusCode(ua.StatusCodes.BadUserAccessDenied)
        if spec.action in WHATIF_ACTIONS:
            return [ua.Variant(await self._whatif(spec, args, who, role), S)]
        return [ua.Variant(await self._submit(spec, args, who, role), S)]

    async def _whatif(self, spec: MethodSpec, args: tuple, who: str, role: Role) -> str:
        """Fork the loop's latest tick into a what-if run (the simulation runs off the event loop),
        or the state of one; the request is journalled, the polls are not."""
        if self.whatif is None:
            answer = "error: this operator server runs no what-if"
        elif spec.action == "whatif":
            answer = await self.whatif.request(args[0], who)
        else:
            return self.whatif.result(args[0])
        if spec.action == "whatif":
            self._journal(spec, args, who, role, answer if answer.startswith("ok") else f"refused: {answer[7:]}")
        return answer

    async def _submit(self, spec: MethodSpec, args: tuple, who: str, role: Role) -> str:
        answer = asyncio.get_running_loop().create_future()
        self._pending.append(OperatorRequest(spec, args, who, role, answer))
        try:
            return await asyncio.wait_for(asyncio.shield(answer), self.drain_timeout_s)
        except TimeoutError:
            answer.cancel()  # drain() skips it
            self._journal(spec, args, who, role, f"refused: {NOT_RUNNING}")
            return f"error: {NOT_RUNNING}"

    # -- the loop side: apply between ticks ----------------------------------------------
    def drain(self, t: float | None = None) -> int:
        """Apply every queued request in order (call on the loop's thread, never during a tick);
        ``t``: plant time of the newest snapshot. Returns how many were applied."""
        if t is not None and math.isfinite(t):
            self.t = t
        applied = 0
        while self._pending:
            req = self._pending.popleft()
            if req.answer.done():  # timed out meanwhile
                continue
            req.answer.set_result(self._apply(req))
            applied += 1
        return applied

    def _apply(self, req: OperatorRequest) -> str:
        t = self.t if math.isfinite(self.t) else time.time()
        alarms, a, who = self.loop.alarms, req.args, req.user
        actions: dict[str, Callable[[], object]] = {
            "acknowledge": lambda: alarms.acknowledge(a[0], who, t),
            "acknowledge_all": lambda: alarms.acknowledge_all(who, t),
            "shelve": lambda: alarms.shelve(a[0], who, t, a[1]),
            "unshelve": lambda: alarms.unshelve(a[0], who, t),
            "set_mode": lambda: self.loop.set_mode(a[0], a[1]),
            "set_shelve_limit": lambda: self._set_shelve_limit(a[0]),
            "comment": lambda: self._known(a[0]),  # journalled; carried in the condition's events
        }
        try:
            done = actions[req.spec.action]()
        except (KeyError, ValueError) as exc:
            reason = str(exc.args[0]) if exc.args else str(exc)
            self._journal(req.spec, a, who, req.role, f"refused: {reason}", t)
            return f"error: {reason}"
        if req.spec.action in ALARM_ACTIONS and (done or req.spec.action == "comment"):  # in the next events
            self.conditions.note(a[0], who, a[1] if req.spec.action in ("acknowledge", "comment") and len(a) > 1
                                 else None)
        elif req.spec.action == "acknowledge_all":
            for entry in done:
                self.conditions.note(entry.alarm_id, who)
        answer = f"ok: {len(done)} transition(s)" if isinstance(done, list) else "ok"
        self._journal(req.spec, a, who, req.role, answer, t)
        return answer

    def _known(self, alarm_id: str) -> None:
        if alarm_id not in self.loop.alarms.index:
            raise KeyError(f"no alarm {alarm_id!r}")

    def _set_shelve_limit(self, seconds: float) -> None:
        cfg = self.loop.alarms.config
        try:
            self.loop.alarms.config = type(cfg).model_validate({**cfg.model_dump(), "max_shelve_s": seconds})
        except ValidationError as exc:
            raise ValueError(f"shelve limit {seconds:g} s: {exc.errors()[0]['msg'].lower()}") from None

    def _journal(self, spec: MethodSpec, args: tuple, who: str, role: Role, result: str,
                 t: float | None = None) -> None:
        if t is None:
            t = self.t if math.isfinite(self.t) else time.time()
        names = [n for n, _ in spec.inputs]
        arguments = {(names[k] if k < len(names) else f"extra{k}"): v for k, v in enumerate(args)}
        target = next((str(arguments.pop(k)) for k in ("alarm_id", "loop") if k in arguments), "")
        self.audit.record(AuditEntry(t, who, role.name.lower(), spec.action, target, arguments, result,
                                     self.loop.session))


def refusal_sentence(method: str, code: int, user: str | None) -> str:
    """The operator's sentence for a call the operator server refused with ``code``."""
    name = ua.StatusCode(code).name
    spec = next((m for m in METHODS if m.name == method), None)
    if code == ua.StatusCodes.BadUserAccessDenied and spec is not None:
        return (f"{method} needs the {spec.role.name.lower()} role, which "
                f"{'user ' + user if user else 'an anonymous session'} does not have ({name})")
    return f"the operator server refused {method}: {name}"


async def call_operator(endpoint: str, security, method: str, *args) -> str:
    """Call a method of the running loop's operator server as ``security`` (a ``ClientSecurity``)
    says; returns its one-line answer (a refusal raises ``ua.UaStatusCodeError``)."""
    from .client_security import connect_client

    client = await connect_client(endpoint, security, name="pilot-line alarms")
    try:
        idx = await client.get_namespace_index(OPERATOR_NS)
        obj = client.get_node(ua.NodeId("Operator", idx))
        return await obj.call_method(ua.NodeId(f"Operator.{method}", idx), *args)
    finally:
        await client.disconnect()
