"""Every alarm of the running loop as an OPC UA condition (Part 9, Alarms & Conditions) on the
operator server, so any A&C client (UaExpert, Ignition, a SCADA's alarm client, node-opcua,
``pilot alarms``) subscribes to them, refreshes them and acknowledges or shelves them.

Address space (namespace ``urn:pilot-line:operator``)::

    Objects/Alarms                 folder, EventNotifier; Server --HasNotifier--> Alarms
      <TAG>                        the SourceNode of the tag's alarms; Alarms --HasEventSource--> <TAG>
        <ALARM_ID>                 the condition; <TAG> --HasComponent, HasCondition--> <ALARM_ID>
          -> Acknowledge, Confirm, AddComment, Enable, Disable   (the type's method nodes, shared)
          ShelvingState            ShelvedStateMachineType -> TimedShelve, Unshelve, OneShotShelve

Types: ``HH``/``HI``/``LO``/``LL`` -> ExclusiveLimitAlarmType, one condition per limit as ISA-18.2
manages them (``LimitState`` HighHigh / High / Low / LowLow, the limit property of its kind);
discrete and external alarms -> OffNormalAlarmType (``PLC.<name>.COMM`` -> SystemOffNormalAlarmType);
``BADPV`` -> InstrumentDiagnosticAlarmType. ConditionClass Process, System for ``PLC.*``.

Events come from the Server object whenever a condition's state changes (raise, clear, acknowledge,
shelve, unshelve, out of service, expiry), after the tick or the action that changed it. Severity
from priority (Part 9 suggests 801-1000 for the most urgent): critical 900, high 700, medium 500,
low 300. ``Retain`` is true while the alarm is active, unacknowledged or shelved, so asyncua's
ConditionRefresh (which replays the retained events) gives a late client the standing alarms.
``Time`` is the plant time of the change.

=========================  ===========  ==========  =============  ===============
ISA-18.2 state             ActiveState  AckedState  ShelvingState  SuppressedState
=========================  ===========  ==========  =============  ===============
normal                     False        True        Unshelved      False
unacknowledged-active      True         False       Unshelved      False
acknowledged-active        True         True        Unshelved      False
returned-to-normal-unack   False        False       Unshelved      False
shelved                    condition    True        TimedShelved   False
suppressed (unit OOS)      condition    True        Unshelved      True
=========================  ===========  ==========  =============  ===============

Methods (the user of the session is the operator; operator role; queued and applied between ticks
and journalled like every operator action):

- ``Acknowledge(EventId, Comment)``: EventId of one of the condition's recent events, else
  BadEventIdUnknown; an acknowledged condition answers BadConditionBranchAlreadyAcked.
- ``AddComment(EventId, Comment)``: journalled, carried in the next events' ``Comment``.
- ``ShelvingState.TimedShelve(ShelvingTime ms)`` and ``ShelvingState.Unshelve()``: the manager's
  shelving (no longer than its ``max_shelve_s``, else BadShelvingTimeOutOfRange).
- ``OneShotShelve``, ``Confirm``, ``Enable``, ``Disable`` answer BadMethodInvalid: shelving is timed
  (ISA-18.2), no confirm step is used, and an alarm goes out of service with its plant unit.

asyncua evaluates ``OfType`` in an event filter's where clause as equality of types, where Part 4
(ContentFilter operators) has it true for the type and every subtype, so a client filtering on
ConditionType would see none of these alarms: ``follow_subtypes_in_of_type`` patches asyncua's
where-clause evaluator once per process (idempotent).
"""

from __future__ import annotations

import logging
import math
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone

from asyncua import Server, ua
from asyncua.common import event_objects as ev

from controllers.alarms import AlarmManager
from controllers.alarms_support import LIMIT_KINDS, AlarmState, Priority

from .methods import MethodSpec
from .server_security import current_user, role_of
from .tagmap import Role

log = logging.getLogger(__name__)
O, S, D = ua.ObjectIds, ua.VariantType.String, ua.VariantType.Double
SEVERITY = {Priority.CRITICAL: 900, Priority.HIGH: 700, Priority.MEDIUM: 500, Priority.LOW: 300}
LIMIT_STATE = {"HH": ("HighHigh", O.ExclusiveLimitStateMachineType_HighHigh, "HighHighLimit"),
               "HI": ("High", O.ExclusiveLimitStateMachineType_High, "HighLimit"),
               "LO": ("Low", O.ExclusiveLimitStateMachineType_Low, "LowLimit"),
               "LL": ("LowLow", O.ExclusiveLimitStateMachineType_LowLow, "LowLowLimit")}
SHELVING = {False: ("Unshelved", O.ShelvedStateMachineType_Unshelved),
            True: ("TimedShelved", O.ShelvedStateMachineType_TimedShelved)}
CONDITION_METHODS = {O.AcknowledgeableConditionType_Acknowledge: "Acknowledge",
                     O.AcknowledgeableConditionType_Confirm: "Confirm", O.ConditionType_AddComment: "AddComment",
                     O.ConditionType_Enable: "Enable", O.ConditionType_Disable: "Disable"}
SHELVING_METHODS = {O.ShelvedStateMachineType_TimedShelve: "TimedShelve",
                    O.ShelvedStateMachineType_Unshelve: "Unshelve",
                    O.ShelvedStateMachineType_OneShotShelve: "OneShotShelve",
                    O.AlarmConditionType_ShelvingState_TimedShelve: "TimedShelve",
                    O.AlarmConditionType_ShelvingState_Unshelve: "Unshelve",
                    O.AlarmConditionType_ShelvingState_OneShotShelve: "OneShotShelve"}
#: the operator actions of the conditions, as journalled (inputs as the manager takes them)
SPECS = {
    "Acknowledge": MethodSpec("Acknowledge", "acknowledge", (("alarm_id", S), ("comment", S)), Role.OPERATOR),
    "AddComment": MethodSpec("AddComment", "comment", (("alarm_id", S), ("comment", S)), Role.OPERATOR),
    "TimedShelve": MethodSpec("TimedShelve", "shelve", (("alarm_id", S), ("duration_s", D)), Role.OPERATOR),
    "Unshelve": MethodSpec("Unshelve", "unshelve", (("alarm_id", S),), Role.OPERATOR),
    "OneShotShelve": MethodSpec("OneShotShelve", "shelve_one_shot", (("alarm_id", S),), Role.OPERATOR),
    "Confirm": MethodSpec("Confirm", "confirm", (("alarm_id", S), ("comment", S)), Role.OPERATOR),
    "Enable": MethodSpec("Enable", "enable", (("alarm_id", S),), Role.OPERATOR),
    "Disable": MethodSpec("Disable", "disable", (("alarm_id", S),), Role.OPERATOR),
}
NOT_OFFERED = {"OneShotShelve": "one-shot shelving is not offered: shelve for a time (TimedShelve)",
               "Confirm": "alarms here have no confirm step: acknowledge is the operator's answer",
               "Enable": "an alarm goes in and out of service with its plant unit",
               "Disable": "an alarm goes in and out of service with its plant unit"}
ARGUMENTS = {"Acknowledge": (ua.VariantType.ByteString, ua.VariantType.LocalizedText),
             "AddComment": (ua.VariantType.ByteString, ua.VariantType.LocalizedText),
             "Confirm": (ua.VariantType.ByteString, ua.VariantType.LocalizedText),
             "TimedShelve": (ua.VariantType.Double,)}
Submit = Callable[[MethodSpec, tuple, str, Role], Awaitable[str]]
Journal = Callable[[MethodSpec, tuple, str, Role, str], None]


def severity_of(priority: Priority | int) -> int:
    return SEVERITY[Priority(priority)]


def priority_of(severity: int) -> Priority:
    """The priority whose severity band holds ``severity`` (the inverse of ``severity_of``)."""
    return min(SEVERITY, key=lambda p: abs(SEVERITY[p] - severity))


@dataclass(frozen=True)
class ConditionState:
    """What a condition's events say, from one alarm of the manager (plain values)."""

    alarm_id: str
    tag: str
    kind: str
    priority: Priority
    active: bool
    acked: bool
    shelved: bool
    suppressed: bool
    since: float  # plant s of the last activation (NaN when never)
    shelved_until: float  # plant s (NaN when not shelved)
    description: str
    limit: float | None
    eng_unit: str
    by: str = ""  # who acknowledged / shelved last
    comment: str = ""

    @property
    def retain(self) -> bool:
        return self.active or not self.acked or self.shelved

    def key(self) -> tuple:
        """What a new event is emitted for (the value alone moving is not an event)."""
        return (self.active, self.acked, self.shelved, self.suppressed, self.shelved_until, self.by, self.comment)


def condition_states(manager: AlarmManager) -> dict[str, ConditionState]:
    """Every alarm of ``manager`` as a ``ConditionState`` (pure: reads the manager's public views)."""
    saved = {a.alarm_id: a for a in manager.saved_state().alarms}
    out = {}
    for d in manager.defs:
        s = saved[d.alarm_id]
        st = s.state
        active = st in (AlarmState.UNACK_ACTIVE, AlarmState.ACK_ACTIVE) or (
            st in (AlarmState.SHELVED, AlarmState.SUPPRESSED) and s.condition)
        out[d.alarm_id] = ConditionState(
            d.alarm_id, d.tag, d.kind, d.priority, active, st not in (AlarmState.UNACK_ACTIVE, AlarmState.RTN_UNACK),
            st == AlarmState.SHELVED, st == AlarmState.SUPPRESSED, s.since, s.shelved_until,
            manager.descriptions[d.alarm_id], d.limit if d.kind in LIMIT_KINDS else None,
            manager.eng_units.get(d.tag, ""))
    return out


def _event_class(kind: str, alarm_id: str):
    if kind in LIMIT_STATE:
        return ev.ExclusiveLimitAlarm, O.ExclusiveLimitAlarmType
    if kind == "BADPV":
        return ev.InstrumentDiagnosticAlarm, O.InstrumentDiagnosticAlarmType
    if alarm_id.startswith("PLC."):
        return ev.SystemOffNormalAlarm, O.SystemOffNormalAlarmType
    return ev.OffNormalAlarm, O.OffNormalAlarmType


def _utc(t: float) -> datetime:
    return datetime.fromtimestamp(t, tz=timezone.utc)


def two_state(event, name: str, value: bool, true: str, false: str) -> None:
    event.add_variable(name, ua.LocalizedText(true if value else false), ua.VariantType.LocalizedText)
    event.add_property(f"{name}/Id", value, ua.VariantType.Boolean)


def build_event(c: ConditionState, node: ua.NodeId, source: ua.NodeId, value_node: ua.NodeId, t: float,
                max_shelve_s: float):
    """The event object of ``c`` (one transition of condition ``node`` at plant time ``t``);
    ``value_node``: the variable with the tag's value (the InputNode)."""
    cls, etype = _event_class(c.kind, c.alarm_id)
    e = cls(sourcenode=source, message=c.description, severity=severity_of(c.priority))
    e.EventId = uuid.uuid4().bytes
    e.EventType = ua.NodeId(etype)
    e.SourceName, e.Time, e.ReceiveTime = c.tag, _utc(t), datetime.now(timezone.utc)
    e.add_property("NodeId", node, ua.VariantType.NodeId)  # the ConditionId
    system = c.alarm_id.startswith("PLC.")
    e.ConditionClassId = ua.NodeId(O.SystemConditionClassType if system else O.ProcessConditionClassType)
    e.ConditionClassName = ua.LocalizedText("System" if system else "Process")
    e.ConditionName, e.BranchId, e.Retain = c.alarm_id, ua.NodeId(), c.retain
    e.LastSeverity, e.Quality = e.Severity, ua.StatusCode(ua.StatusCodes.Good)
    e.Comment, e.ClientUserId, e.InputNode = ua.LocalizedText(c.comment), c.by, value_node
    two_state(e, "EnabledState", True, "Enabled", "Disabled")
    two_state(e, "ActiveState", c.active, "Active", "Inactive")
    two_state(e, "AckedState", c.acked, "Acknowledged", "Unacknowledged")
    two_state(e, "SuppressedState", c.suppressed, "Suppressed", "Unsuppressed")
    two_state(e, "OutOfServiceState", c.suppressed, "Out of Service", "In Service")
    e.SuppressedOrShelved = c.shelved or c.suppressed
    e.MaxTimeShelved = max_shelve_s * 1000.0
    name, sid = SHELVING[c.shelved]
    e.add_variable("ShelvingState/CurrentState", ua.LocalizedText(name), ua.VariantType.LocalizedText)
    e.add_property("ShelvingState/CurrentState/Id", ua.NodeId(sid), ua.VariantType.NodeId)
    remaining = (c.shelved_until - t) * 1000.0 if c.shelved and math.isfinite(c.shelved_until) else 0.0
    e.add_property("ShelvingState/UnshelveTime", max(remaining, 0.0), ua.VariantType.Double)
    if math.isfinite(c.since):
        e.add_property("ActiveState/TransitionTime", _utc(c.since), ua.VariantType.DateTime)
    if c.kind in LIMIT_STATE:
        state, state_id, prop = LIMIT_STATE[c.kind]
        setattr(e, prop, c.limit)
        setattr(e, "Severity" + prop.removesuffix("Limit"), e.Severity)
        e.add_variable("LimitState/CurrentState", ua.LocalizedText(state if c.active else ""),
                       ua.VariantType.LocalizedText)
        e.add_property("LimitState/CurrentState/Id", ua.NodeId(state_id) if c.active else ua.NodeId(),
                       ua.VariantType.NodeId)
    return e


class AlarmConditions:
    """The conditions of ``manager`` on ``server`` (namespace ``idx``): nodes, events, methods.

    ``submit(spec, args, user, role)`` queues an operator action and answers its one line;
    ``journal(spec, args, user, role, result)`` journals one refused before it was queued."""

    def __init__(self, server: Server, idx: int, manager: AlarmManager, security, submit: Submit,
                 journal: Journal):
        self.server, self.idx, self.manager, self.security = server, idx, manager, security
        self.submit, self.journal = submit, journal
        self.nodes: dict[str, ua.NodeId] = {}
        self._by_node: dict[ua.NodeId, str] = {}
        self._sources: dict[str, ua.NodeId] = {}
        self._last: dict[str, ConditionState] = {}
        self._events: dict[str, deque[bytes]] = {}
        self._notes: dict[str, tuple[str, str]] = {}  # alarm id -> (by, comment)
        self._values: dict[str, float | None] = {}  # tag -> the value last written

    # -- address space --------------------------------------------------------------------
    async def build(self) -> None:
        follow_subtypes_in_of_type()
        iserver = self.server.iserver
        iserver.bind_condition_methods = 1  # ConditionRefresh(2) and the Refresh events (severity 1)
        await iserver.setup_condition_methods()
        idx, aspace = self.idx, iserver.isession
        folder = ua.NodeId("Alarms", idx)
        items = [_object(folder, "Alarms", ua.NodeId(O.ObjectsFolder), ua.NodeId(O.FolderType), O.Organizes)]
        refs = [_ref(ua.NodeId(O.Server), O.HasNotifier, folder)]
        for d in self.manager.defs:
            src = self._sources.get(d.tag)
            if src is None:
                src = self._sources[d.tag] = ua.NodeId(f"Alarms.{d.tag}", idx)
                items.append(_object(src, d.tag, folder, ua.NodeId(O.BaseObjectType), O.HasComponent))
                items += _value_variable(ua.NodeId(f"Alarms.{d.tag}.Value", idx), src,
                                         self.manager.eng_units.get(d.tag, ""))
                refs.append(_ref(folder, O.HasEventSource, src))
            node = self.nodes[d.alarm_id] = ua.NodeId(f"Alarms.{d.alarm_id}", idx)
            self._by_node[node] = d.alarm_id
            shelving = ua.NodeId(f"Alarms.{d.alarm_id}.ShelvingState", idx)
            self._by_node[shelving] = d.alarm_id
            items += [_object(node, d.alarm_id, src, ua.NodeId(_event_class(d.kind, d.alarm_id)[1]), O.HasComponent),
                      _object(shelving, "ShelvingState", node, ua.NodeId(O.ShelvedStateMachineType), O.HasComponent)]
            refs.append(_ref(src, O.HasCondition, node))
            refs += [_ref(node, O.HasComponent, ua.NodeId(m)) for m in CONDITION_METHODS]
            refs += [_ref(shelving, O.HasComponent, ua.NodeId(m)) for m in list(SHELVING_METHODS)[:3]]
        for result in await aspace.add_nodes(items):
            result.StatusCode.check()
        for status in await aspace.add_references(refs):
            status.check()
        for method, name in {**CONDITION_METHODS, **SHELVING_METHODS}.items():
            self.server.link_method(self.server.get_node(ua.NodeId(method)), self._callback(name))
        self._last = {k: replace(v, active=False, acked=True, shelved=False, suppressed=False)
                      for k, v in condition_states(self.manager).items()}  # so restored alarms are announced

    # -- events ---------------------------------------------------------------------------
    async def publish(self, t: float) -> int:
        """Emit an event for every condition whose state changed since the last call (plant time
        ``t``); returns how many."""
        await self._write_values()
        emitted = 0
        for alarm_id, c in condition_states(self.manager).items():
            by, comment = self._notes.get(alarm_id, ("", ""))
            c = replace(c, by=by, comment=comment)
            if self._last.get(alarm_id) is not None and self._last[alarm_id].key() == c.key():
                continue
            self._last[alarm_id] = c
            event = build_event(c, self.nodes[alarm_id], self._sources[c.tag], self._value_node(c.tag), t,
                                self.manager.config.max_shelve_s)
            self._events.setdefault(alarm_id, deque(maxlen=16)).append(event.EventId)
            await self.server.iserver.subscription_service.trigger_event(event)
            emitted += 1
        return emitted

    def _value_node(self, tag: str) -> ua.NodeId:
        return ua.NodeId(f"Alarms.{tag}.Value", self.idx)

    async def _write_values(self) -> None:
        """The tags' newest values into their InputNode variables (Bad status while bad or missing)."""
        for tag, v in self.manager.tag_values().items():
            good = math.isfinite(v)
            if self._values.get(tag, "") == (v if good else None):
                continue
            self._values[tag] = v if good else None
            dv = ua.DataValue(ua.Variant(v, ua.VariantType.Double) if good else ua.Variant(None, ua.VariantType.Null),
                              StatusCode=ua.StatusCode(ua.StatusCodes.Good if good else ua.StatusCodes.BadNoData),
                              SourceTimestamp=datetime.now(timezone.utc))
            await self.server.write_attribute_value(self._value_node(tag), dv)

    def note(self, alarm_id: str, by: str, comment: str | None = None) -> None:
        """Who acted on ``alarm_id`` last (and the comment), carried in its next events."""
        _, old = self._notes.get(alarm_id, ("", ""))
        self._notes[alarm_id] = (by, old if comment is None else comment)

    # -- methods --------------------------------------------------------------------------
    def _callback(self, name: str) -> Callable:
        async def call(parent: ua.NodeId, *variants: ua.Variant):
            return await self._call(name, parent, variants)
        return call

    async def _call(self, name: str, parent: ua.NodeId, variants: tuple[ua.Variant, ...]):
        alarm_id = self._by_node.get(parent)
        if alarm_id is None:
            return ua.StatusCode(ua.StatusCodes.BadNodeIdInvalid)
        user = current_user()
        role = role_of(self.security, user)
        who = user.name if user is not None and user.name else "anonymous"
        spec = SPECS[name]
        values = tuple(v.Value for v in variants)
        comment = values[1].Text or "" if len(values) > 1 and isinstance(values[1], ua.LocalizedText) else ""
        problem = self._problem(name, alarm_id, variants, role)
        if problem is not None:
            code, reason = problem
            self.journal(spec, (alarm_id, *([comment] if len(spec.inputs) > 1 and comment else [])), who, role,
                         f"refused: {reason}")
            return ua.StatusCode(code)
        args = ((alarm_id, values[0] / 1000.0) if name == "TimedShelve" else (alarm_id,) if name == "Unshelve"
                else (alarm_id, comment))
        answer = await self.submit(spec, args, who, role)
        if answer.startswith("error"):
            code = (ua.StatusCodes.BadShelvingTimeOutOfRange if name == "TimedShelve" and "duration must be" in answer
                    else ua.StatusCodes.BadConditionNotShelved if name == "Unshelve"
                    else ua.StatusCodes.BadInvalidState)
            return ua.StatusCode(code)
        return []

    def _problem(self, name: str, alarm_id: str, variants, role: Role) -> tuple[int, str] | None:
        """(status code, reason) when the call is refused before it is queued."""
        if name in NOT_OFFERED:
            return ua.StatusCodes.BadMethodInvalid, NOT_OFFERED[name]
        want = ARGUMENTS.get(name, ())
        if len(variants) != len(want):
            code = ua.StatusCodes.BadArgumentsMissing if len(variants) < len(want) else ua.StatusCodes.BadTooManyArguments
            return code, f"{name} takes {len(want)} argument(s); got {len(variants)}"
        if any(v.VariantType != w for v, w in zip(variants, want)):
            return ua.StatusCodes.BadInvalidArgument, f"{name} takes {', '.join(w.name for w in want)}"
        if role < SPECS[name].role:
            return ua.StatusCodes.BadUserAccessDenied, f"{name} needs the {SPECS[name].role.name.lower()} role"
        if name in ("Acknowledge", "AddComment") and variants[0].Value not in self._events.get(alarm_id, ()):
            return ua.StatusCodes.BadEventIdUnknown, "the EventId is not one of the condition's recent events"
        state = self._last.get(alarm_id)
        if name == "Acknowledge" and state is not None and state.acked:
            return ua.StatusCodes.BadConditionBranchAlreadyAcked, "the alarm is acknowledged already"
        if name == "Unshelve" and state is not None and not state.shelved:
            return ua.StatusCodes.BadConditionNotShelved, "the alarm is not shelved"
        return None


def _object(node: ua.NodeId, name: str, parent: ua.NodeId, typedef: ua.NodeId, reftype: int) -> ua.AddNodesItem:
    attrs = ua.ObjectAttributes(DisplayName=ua.LocalizedText(name), Description=ua.LocalizedText(name),
                                EventNotifier=1 if typedef == ua.NodeId(O.FolderType) else 0)
    return ua.AddNodesItem(RequestedNewNodeId=node, BrowseName=ua.QualifiedName(name, node.NamespaceIndex),
                           NodeClass=ua.NodeClass.Object, ParentNodeId=parent,
                           ReferenceTypeId=ua.NodeId(reftype), NodeAttributes=attrs, TypeDefinition=typedef)


def _value_variable(node: ua.NodeId, parent: ua.NodeId, unit: str) -> list[ua.AddNodesItem]:
    """The read-only Double ``Value`` of a tag (its conditions' InputNode) and its EngineeringUnits."""
    ns = node.NamespaceIndex
    value = ua.VariableAttributes(DisplayName=ua.LocalizedText("Value"), DataType=ua.NodeId(O.Double),
                                  Value=ua.Variant(float("nan"), ua.VariantType.Double), ValueRank=-1,
                                  AccessLevel=ua.AccessLevel.CurrentRead.mask,
                                  UserAccessLevel=ua.AccessLevel.CurrentRead.mask)
    eu = ua.VariableAttributes(DisplayName=ua.LocalizedText("EngineeringUnits"), DataType=ua.NodeId(O.EUInformation),
                               Value=ua.Variant(ua.EUInformation(DisplayName=ua.LocalizedText(unit),
                                                                 Description=ua.LocalizedText(unit))),
                               ValueRank=-1, AccessLevel=ua.AccessLevel.CurrentRead.mask,
                               UserAccessLevel=ua.AccessLevel.CurrentRead.mask)
    return [ua.AddNodesItem(RequestedNewNodeId=node, BrowseName=ua.QualifiedName("Value", ns),
                            NodeClass=ua.NodeClass.Variable, ParentNodeId=parent,
                            ReferenceTypeId=ua.NodeId(O.HasComponent), NodeAttributes=value,
                            TypeDefinition=ua.NodeId(O.BaseDataVariableType)),
            ua.AddNodesItem(RequestedNewNodeId=ua.NodeId(f"{node.Identifier}.EngineeringUnits", ns),
                            BrowseName=ua.QualifiedName("EngineeringUnits", 0), NodeClass=ua.NodeClass.Variable,
                            ParentNodeId=node, ReferenceTypeId=ua.NodeId(O.HasProperty), NodeAttributes=eu,
                            TypeDefinition=ua.NodeId(O.PropertyType))]


def _ref(source: ua.NodeId, reftype: int, target: ua.NodeId) -> ua.AddReferencesItem:
    return ua.AddReferencesItem(SourceNodeId=source, ReferenceTypeId=ua.NodeId(reftype), IsForward=True,
                                TargetNodeId=target, TargetNodeClass=ua.NodeClass.Object)


def _is_subtype(aspace, node: ua.NodeId, base: ua.NodeId) -> bool:
    """``node`` is ``base`` or one of its subtypes (follows inverse HasSubtype references up)."""
    seen: set = set()
    while node is not None and node not in seen:
        if node == base:
            return True
        seen.add(node)
        data = aspace.get(node)
        node = next((r.NodeId for r in (data.references if data else ())
                     if r.ReferenceTypeId == ua.NodeId(O.HasSubtype) and not r.IsForward), None)
    return False


def follow_subtypes_in_of_type() -> None:
    """Make asyncua's where-clause ``OfType`` true for subtypes too (Part 4); once per process."""
    from asyncua.server import monitored_item_service as mis

    cls = mis.WhereClauseEvaluator
    if getattr(cls, "_of_type_follows_subtypes", False):
        return
    original = cls._eval_el

    def _eval_el(self, index: int, event):
        el = self.elements[index]
        if el.FilterOperator == ua.FilterOperator.OfType:
            return _is_subtype(self._aspace, event.EventType, self._eval_op(el.FilterOperands[0], event))
        return original(self, index, event)

    cls._eval_el = _eval_el
    cls._of_type_follows_subtypes = True
