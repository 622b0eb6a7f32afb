"""A client of the operator server's Alarms & Conditions (``opcua_server.conditions``), as any A&C
client works: subscribe to the Server object's events, ConditionRefresh, then act on a condition
with the standard methods (Acknowledge with the EventId of its newest event, the ShelvingState's
TimedShelve / Unshelve). ``pilot alarms`` goes through here.

``standing(client)`` answers the retained conditions (active, unacknowledged or shelved) as plain
rows: id, tag, state, priority, description, limit, value and engineering unit (from the
condition's InputNode), since (plant s of the activation), shelved_until, by, comment.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass

from asyncua import Client, ua

from controllers.alarms_support import Priority

from .conditions import LIMIT_STATE, priority_of

O = ua.ObjectIds
OPERATOR_NS = "urn:pilot-line:operator"
FIELDS = ("EventId", "EventType", "ConditionName", "SourceName", "Message", "Severity", "Time", "Retain",
          "ActiveState/Id", "ActiveState/TransitionTime", "AckedState/Id", "SuppressedState/Id",
          "ShelvingState/CurrentState", "ShelvingState/UnshelveTime", "ClientUserId", "Comment", "InputNode",
          *(prop for _, _, prop in LIMIT_STATE.values()))


def event_filter() -> ua.EventFilter:
    """The select clauses of ``FIELDS`` and the ConditionId (no where clause: the refresh's end event
    must come through too)."""
    clauses = []
    for name in FIELDS:
        op = ua.SimpleAttributeOperand(TypeDefinitionId=ua.NodeId(O.BaseEventType),
                                       BrowsePath=[ua.QualifiedName(p, 0) for p in name.split("/")],
                                       AttributeId=ua.AttributeIds.Value)
        clauses.append(op)
    clauses.append(ua.SimpleAttributeOperand(TypeDefinitionId=ua.NodeId(O.ConditionType), BrowsePath=[],
                                             AttributeId=ua.AttributeIds.NodeId))
    return ua.EventFilter(SelectClauses=clauses)


@dataclass
class _Collector:
    """Subscription handler: the newest event per condition, until the refresh ends."""

    events: dict
    done: asyncio.Event
    refreshing: bool = False

    def event_notification(self, event) -> None:
        etype = getattr(event, "EventType", None)
        if etype == ua.NodeId(O.RefreshStartEventType):
            self.refreshing = True
        elif etype == ua.NodeId(O.RefreshEndEventType):
            self.done.set()
        elif getattr(event, "ConditionName", None):
            self.events[event.ConditionName] = event


async def standing_events(client: Client, timeout_s: float = 10.0) -> dict[str, object]:
    """The newest event of every retained condition, by ConditionRefresh on a new subscription."""
    collector = _Collector({}, asyncio.Event())
    sub = await client.create_subscription(50, collector)
    try:
        await sub.subscribe_events(client.nodes.server, ua.ObjectIds.BaseEventType, evfilter=event_filter())
        await client.get_node(ua.NodeId(O.ConditionType)).call_method(
            ua.NodeId(O.ConditionType_ConditionRefresh), ua.Variant(sub.subscription_id, ua.VariantType.UInt32))
        await asyncio.wait_for(collector.done.wait(), timeout_s)
    finally:
        await sub.delete()
    return {k: e for k, e in collector.events.items() if e.Retain}


def _num(x) -> float | None:
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None


def _state(e) -> str:
    shelving = getattr(e, "ShelvingState/CurrentState", None)
    if shelving is not None and shelving.Text == "TimedShelved":
        return "shelved"
    if getattr(e, "SuppressedState/Id", False):
        return "suppressed"
    active, acked = getattr(e, "ActiveState/Id", False), getattr(e, "AckedState/Id", True)
    if active:
        return "acknowledged-active" if acked else "unacknowledged-active"
    return "returned-to-normal-unacknowledged" if not acked else "normal"


def _plant_s(t) -> float | None:
    return t.timestamp() if t is not None else None


async def standing(client: Client, timeout_s: float = 10.0) -> list[dict]:
    """The retained conditions as rows (see the module docstring), highest priority first."""
    events = await standing_events(client, timeout_s)
    inputs = {k: e.InputNode for k, e in events.items() if getattr(e, "InputNode", None)}
    values = await _values(client, sorted(set(inputs.values()), key=str))
    rows = []
    for alarm_id, e in events.items():
        prio: Priority = priority_of(e.Severity)
        value, unit = values.get(inputs.get(alarm_id), (None, ""))
        limit = next((_num(getattr(e, p, None)) for p in (q for _, _, q in LIMIT_STATE.values())
                      if _num(getattr(e, p, None)) is not None), None)
        remaining = getattr(e, "ShelvingState/UnshelveTime", 0.0) or 0.0
        state = _state(e)
        rows.append({"id": alarm_id, "state": state, "priority": int(prio), "priority_name": prio.name.lower(),
                     "severity": e.Severity, "tag": e.SourceName, "description": e.Message.Text or "",
                     "limit": limit, "eng_unit": unit, "value": value,
                     "since": _plant_s(getattr(e, "ActiveState/TransitionTime", None)),
                     "shelved_until": (_plant_s(e.Time) + remaining / 1000.0) if state == "shelved" else None,
                     "by": e.ClientUserId or "", "comment": (e.Comment.Text if e.Comment else "") or ""})
    return sorted(rows, key=lambda r: (r["state"] == "shelved", r["priority"], -(r["since"] or 0.0)))


async def _values(client: Client, nodes: list[ua.NodeId]) -> dict[ua.NodeId, tuple[float | None, str]]:
    """The value (None when bad) and engineering unit of each InputNode."""
    if not nodes:
        return {}
    dvs = await client.read_attributes([client.get_node(n) for n in nodes])
    units = []
    for n in nodes:
        eu = await client.get_node(n).get_child("0:EngineeringUnits")
        units.append((await eu.read_value()).DisplayName.Text or "")
    return {n: (_num(dv.Value.Value) if dv.StatusCode.is_good() else None, u) for n, dv, u in zip(nodes, dvs, units)}


async def condition_node(client: Client, alarm_id: str) -> ua.NodeId:
    """The NodeId of the condition ``alarm_id`` (KeyError naming it when the server has none)."""
    idx = await client.get_namespace_index(OPERATOR_NS)
    node = ua.NodeId(f"Alarms.{alarm_id}", idx)
    try:
        await client.get_node(node).read_browse_name()
    except ua.UaStatusCodeError:
        raise KeyError(f"the operator server has no alarm {alarm_id!r}") from None
    return node


async def acknowledge(client: Client, alarm_ids: list[str] | None, comment: str = "") -> list[str]:
    """Acknowledge the given alarms (None: every unacknowledged one) with the EventId of each one's
    newest event; returns the ids acknowledged. An alarm with nothing to acknowledge is skipped."""
    events = await standing_events(client)
    if alarm_ids is None:
        alarm_ids = [k for k, e in events.items() if not getattr(e, "AckedState/Id", True)]
    done = []
    for alarm_id in alarm_ids:
        node = await condition_node(client, alarm_id)
        e = events.get(alarm_id)
        if e is None or getattr(e, "AckedState/Id", True):
            continue
        await client.get_node(node).call_method(
            ua.NodeId(O.AcknowledgeableConditionType_Acknowledge), ua.Variant(e.EventId, ua.VariantType.ByteString),
            ua.Variant(ua.LocalizedText(comment), ua.VariantType.LocalizedText))
        done.append(alarm_id)
    return done


async def shelve(client: Client, alarm_id: str, seconds: float | None) -> None:
    """TimedShelve for ``seconds`` (None: Unshelve) on the condition's ShelvingState."""
    node = await condition_node(client, alarm_id)
    shelving = client.get_node(ua.NodeId(f"{node.Identifier}.ShelvingState", node.NamespaceIndex))
    if seconds is None:
        await shelving.call_method(ua.NodeId(O.ShelvedStateMachineType_Unshelve))
    else:
        await shelving.call_method(ua.NodeId(O.ShelvedStateMachineType_TimedShelve),
                                   ua.Variant(seconds * 1000.0, ua.VariantType.Double))
