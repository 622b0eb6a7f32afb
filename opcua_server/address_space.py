"""The simulated PLC's address space, laid out as a PLC integrator would:

    Objects/
      PLC (ns;s=PLC)                      the controller
        <unit> (ns;s=units/<unit>)        one object per plant unit ("adsorption", "cell1", ...)
          <tag> (ns;s=<node id>)          AnalogItemType (Float/Double tags) or BaseDataVariableType
            EURange, EngineeringUnits     properties (Range in engineering units; UNECE unit code)
        Diagnostics (ns;s=Diagnostics)
          Heartbeat   UInt32, +1 every wall-clock second while the PLC scan runs
          PlantTime   Double, plant seconds since the run's epoch
          ClientWatchdog  UInt32, written by the supervising client (operator role)
          WatchdogExpired Boolean, true when ClientWatchdog has not changed for watchdog_s

Measurements (sensor, analyser, status) are read-only (AccessLevel CurrentRead); setpoints and
manipulated variables are CurrentRead|CurrentWrite. Values are pushed by ``FastWriter``: a DataValue
is built once per change and handed to the monitored items without the per-item deep copy that
stock asyncua makes (``install_fast_monitored_items``), and an unchanged value/status is not pushed
at all (its SourceTimestamp keeps the time it last changed, as OPC UA defines it).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from asyncua import Server, ua
from asyncua.server import monitored_item_service as _mis

from .tagmap import DATA_TYPE_IDS, TagEntry, TagMap

UNECE_URI = "http://www.opcfoundation.org/UA/units/un/cefact"
UNECE_CODES = {
    "A": "AMP", "V": "VLT", "W": "WTT", "kW": "KWT", "degC": "CEL", "K": "KEL", "kPa": "KPA",
    "bar": "BAR", "Pa": "PAL", "mbar": "MBR", "kg": "KGM", "g": "GRM", "%": "P1", "wt%": "P1",
    "L": "LTR", "s": "SEC", "min": "MIN", "h": "HUR", "m": "MTR", "m3/h": "MQH", "L/h": "E32",
    "kg/h": "E93", "g/L": "GL", "mg/L": "M1", "1": "C62",
}
UTC = dt.UTC


def unece_unit_id(unit: str) -> int:
    code = UNECE_CODES.get(unit)
    if code is None:
        return -1
    out = 0
    for ch in code:
        out = (out << 8) | ord(ch)
    return out


def eu_information(unit: str) -> ua.EUInformation:
    return ua.EUInformation(NamespaceUri=UNECE_URI, UnitId=unece_unit_id(unit),
                            DisplayName=ua.LocalizedText(unit), Description=ua.LocalizedText(unit))


def install_fast_monitored_items() -> None:
    """Stop asyncua's server from deep-copying every DataValue for every monitored item.

    ``MonitoredItemValues.set_current_datavalue`` deep-copies the value to guard against in-place
    mutation; nothing in this server mutates a DataValue after handing it over (the PLC scan builds
    a new one per change, decoded client writes are fresh objects), so a reference is enough.
    The deep copy was ~70% of the server's CPU at 1,000 subscribed tags at 10 Hz."""
    cls = _mis.MonitoredItemValues
    if getattr(cls, "_pilot_fast", False):
        return

    def set_current_datavalue(self, cur_val):
        self.old_dvalue = self.current_dvalue
        self.current_dvalue = cur_val

    cls.set_current_datavalue = set_current_datavalue
    cls._pilot_fast = True


def _variable_item(ns: int, parent: ua.NodeId, entry: TagEntry, value, source_time: dt.datetime) -> ua.AddNodesItem:
    tag = entry.tag
    attrs = ua.VariableAttributes()
    attrs.DisplayName = ua.LocalizedText(tag.name)
    attrs.Description = ua.LocalizedText(tag.description or tag.name)
    attrs.Value = ua.Variant(value, entry.vtype)
    attrs.DataType = ua.NodeId(DATA_TYPE_IDS[tag.opcua.data_type])
    attrs.ValueRank = ua.ValueRank.Scalar
    level = ua.AccessLevel.CurrentRead.mask
    if entry.role is not None:
        level |= ua.AccessLevel.CurrentWrite.mask
    attrs.AccessLevel = attrs.UserAccessLevel = level
    attrs.MinimumSamplingInterval = float(tag.opcua.sampling_interval_ms)
    attrs.SpecifiedAttributes = (ua.NodeAttributesMask.DisplayName | ua.NodeAttributesMask.Description
                                 | ua.NodeAttributesMask.Value | ua.NodeAttributesMask.DataType
                                 | ua.NodeAttributesMask.ValueRank | ua.NodeAttributesMask.AccessLevel
                                 | ua.NodeAttributesMask.UserAccessLevel
                                 | ua.NodeAttributesMask.MinimumSamplingInterval)
    analog = tag.opcua.data_type in ("Float", "Double")
    return ua.AddNodesItem(
        RequestedNewNodeId=entry.node_id(ns), BrowseName=ua.QualifiedName(tag.name, ns),
        NodeClass=ua.NodeClass.Variable, ParentNodeId=parent,
        ReferenceTypeId=ua.NodeId(ua.ObjectIds.HasComponent),
        TypeDefinition=ua.NodeId(ua.ObjectIds.AnalogItemType if analog else ua.ObjectIds.BaseDataVariableType),
        NodeAttributes=attrs)


def _property_item(ns: int, parent: ua.NodeId, name: str, variant: ua.Variant, dtype: int) -> ua.AddNodesItem:
    attrs = ua.VariableAttributes()
    attrs.DisplayName = ua.LocalizedText(name)
    attrs.Value = variant
    attrs.DataType = ua.NodeId(dtype)
    attrs.ValueRank = ua.ValueRank.Scalar
    attrs.AccessLevel = attrs.UserAccessLevel = ua.AccessLevel.CurrentRead.mask
    attrs.SpecifiedAttributes = (ua.NodeAttributesMask.DisplayName | ua.NodeAttributesMask.Value
                                 | ua.NodeAttributesMask.DataType | ua.NodeAttributesMask.ValueRank
                                 | ua.NodeAttributesMask.AccessLevel | ua.NodeAttributesMask.UserAccessLevel)
    return ua.AddNodesItem(
        RequestedNewNodeId=ua.NodeId(f"{parent.Identifier}.{name}", ns), BrowseName=ua.QualifiedName(name, 0),
        NodeClass=ua.NodeClass.Variable, ParentNodeId=parent, ReferenceTypeId=ua.NodeId(ua.ObjectIds.HasProperty),
        TypeDefinition=ua.NodeId(ua.ObjectIds.PropertyType), NodeAttributes=attrs)


def _object_item(ns: int, ident: str, name: str, parent: ua.NodeId, organizes: bool = False) -> ua.AddNodesItem:
    attrs = ua.ObjectAttributes()
    attrs.DisplayName = ua.LocalizedText(name)
    attrs.EventNotifier = 0
    attrs.SpecifiedAttributes = ua.NodeAttributesMask.DisplayName | ua.NodeAttributesMask.EventNotifier
    ref = ua.ObjectIds.Organizes if organizes else ua.ObjectIds.HasComponent
    return ua.AddNodesItem(
        RequestedNewNodeId=ua.NodeId(ident, ns), BrowseName=ua.QualifiedName(name, ns),
        NodeClass=ua.NodeClass.Object, ParentNodeId=parent, ReferenceTypeId=ua.NodeId(ref),
        TypeDefinition=ua.NodeId(ua.ObjectIds.BaseObjectType), NodeAttributes=attrs)


DIAGNOSTICS = {  # name -> (variant type, data type id, writable)
    "Heartbeat": (ua.VariantType.UInt32, ua.ObjectIds.UInt32, False),
    "PlantTime": (ua.VariantType.Double, ua.ObjectIds.Double, False),
    "ClientWatchdog": (ua.VariantType.UInt32, ua.ObjectIds.UInt32, True),
    "WatchdogExpired": (ua.VariantType.Boolean, ua.ObjectIds.Boolean, False),
}


def _diag_item(ns: int, parent: ua.NodeId, name: str) -> ua.AddNodesItem:
    vtype, dtype, writable = DIAGNOSTICS[name]
    attrs = ua.VariableAttributes()
    attrs.DisplayName = ua.LocalizedText(name)
    attrs.Value = ua.Variant(False if vtype == ua.VariantType.Boolean else 0, vtype)
    attrs.DataType = ua.NodeId(dtype)
    attrs.ValueRank = ua.ValueRank.Scalar
    level = ua.AccessLevel.CurrentRead.mask | (ua.AccessLevel.CurrentWrite.mask if writable else 0)
    attrs.AccessLevel = attrs.UserAccessLevel = level
    attrs.SpecifiedAttributes = (ua.NodeAttributesMask.DisplayName | ua.NodeAttributesMask.Value
                                 | ua.NodeAttributesMask.DataType | ua.NodeAttributesMask.ValueRank
                                 | ua.NodeAttributesMask.AccessLevel | ua.NodeAttributesMask.UserAccessLevel)
    return ua.AddNodesItem(
        RequestedNewNodeId=ua.NodeId(f"Diagnostics.{name}", ns), BrowseName=ua.QualifiedName(name, ns),
        NodeClass=ua.NodeClass.Variable, ParentNodeId=parent, ReferenceTypeId=ua.NodeId(ua.ObjectIds.HasComponent),
        TypeDefinition=ua.NodeId(ua.ObjectIds.BaseDataVariableType), NodeAttributes=attrs)


def build_address_space(server: Server, ns: int, tagmap: TagMap, unit_of, initial: dict) -> None:
    """Add the PLC, unit objects, tag variables with their properties and diagnostics in a few
    batched AddNodes calls. ``initial`` maps tag name -> (variant value, source datetime)."""
    root = ua.NodeId("PLC", ns)
    items = [_object_item(ns, "PLC", "PLC", ua.NodeId(ua.ObjectIds.ObjectsFolder), organizes=True)]
    units = sorted({unit_of(e.name) for e in tagmap})
    items += [_object_item(ns, f"units/{u}", u, root) for u in units]
    items.append(_object_item(ns, "Diagnostics", "Diagnostics", root))
    for entry in tagmap:
        value, stamp = initial[entry.name]
        items.append(_variable_item(ns, ua.NodeId(f"units/{unit_of(entry.name)}", ns), entry, value, stamp))
    for entry in tagmap:
        nid = entry.node_id(ns)
        rng = ua.Range(Low=float(entry.tag.low), High=float(entry.tag.high))
        items.append(_property_item(ns, nid, "EURange", ua.Variant(rng, ua.VariantType.ExtensionObject), ua.ObjectIds.Range))
        items.append(_property_item(ns, nid, "EngineeringUnits",
                                    ua.Variant(eu_information(entry.tag.unit), ua.VariantType.ExtensionObject),
                                    ua.ObjectIds.EUInformation))
    items += [_diag_item(ns, ua.NodeId("Diagnostics", ns), name) for name in DIAGNOSTICS]
    results = server.iserver.node_mgt_service.add_nodes(items)
    bad = [(i.RequestedNewNodeId, r.StatusCode) for i, r in zip(items, results) if not r.StatusCode.is_good()]
    if bad:
        raise RuntimeError(f"could not build the address space: {bad[:5]}")


@dataclass
class _Slot:
    attval: object
    last: tuple | None = None


class FastWriter:
    """Push values into the address space: one DataValue per change, straight to the monitored
    items (no type re-check, no deep copy), skipped when value and status are unchanged."""

    def __init__(self, server: Server, stock: bool = False):
        self.server, self.stock = server, stock  # stock: asyncua's public write path (for comparison)
        self.aspace = server.iserver.aspace
        self._slots: dict[ua.NodeId, _Slot] = {}
        self.pushed = 0

    def _slot(self, nid: ua.NodeId) -> _Slot:
        slot = self._slots.get(nid)
        if slot is None:
            slot = self._slots[nid] = _Slot(self.aspace._nodes[nid].attributes[ua.AttributeIds.Value])
        return slot

    async def push(self, nid: ua.NodeId, variant: ua.Variant, status: int, source: dt.datetime,
                   force: bool = False) -> bool:
        slot = self._slot(nid)
        key = (variant.Value, status)
        if not force and slot.last == key:
            return False
        slot.last = key
        bad = (status & 0xC0000000) == 0x80000000
        dv = ua.DataValue(ua.Variant(None, ua.VariantType.Null) if bad else variant,
                          StatusCode=ua.StatusCode(status), SourceTimestamp=source,
                          ServerTimestamp=dt.datetime.now(UTC))
        if self.stock:
            await self.server.write_attribute_value(nid, dv)
            self.pushed += 1
            return True
        slot.attval.value = dv
        slot.attval.value_callback = None
        for handle, callback in list(slot.attval.datachange_callbacks.items()):
            await callback(handle, dv)
        self.pushed += 1
        return True

    def current(self, nid: ua.NodeId) -> ua.DataValue:
        return self._slot(nid).attval.value
