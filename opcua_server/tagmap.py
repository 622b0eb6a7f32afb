"""The tag map: how a config ``Tag`` appears on an OPC UA server, the same for our simulated PLC
and for the bridge that talks to a real one.

- NodeId: ``ns=<index of the config's namespace URI>;s=<tag.opcua.node_id or tag.name>``. The
  index is looked up from the URI at connect time, never taken from the config.
- Variant type per tag (``tag.opcua.data_type``; a PLC REAL is a Float); values are engineering
  units, cast on the way out (Float/Double: float, Int32/UInt32: rounded int, Boolean: value >= 0.5).
- Who may write (roles ordered viewer < operator < engineer): read-only kinds nobody; a limit or a
  tuning parameter (``tag.opcua.write_role`` when the config carries it, otherwise a name with
  LIMIT / _HI / _LO / TUNE / KP / KI / TI / TD / GAIN in it) the engineer; every other setpoint and
  manipulated variable the operator and the engineer. Anonymous sessions only read.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

from asyncua import ua

from pilot_config.tags import Tag

VARIANT_TYPES: dict[str, ua.VariantType] = {
    "Float": ua.VariantType.Float,
    "Double": ua.VariantType.Double,
    "Boolean": ua.VariantType.Boolean,
    "Int32": ua.VariantType.Int32,
    "UInt32": ua.VariantType.UInt32,
}
DATA_TYPE_IDS: dict[str, int] = {
    "Float": ua.ObjectIds.Float,
    "Double": ua.ObjectIds.Double,
    "Boolean": ua.ObjectIds.Boolean,
    "Int32": ua.ObjectIds.Int32,
    "UInt32": ua.ObjectIds.UInt32,
}
_ENGINEER_NAME = re.compile(r"(LIMIT|_HI\b|_LO\b|_HI_|_LO_|TUNE|TUNING|\bKP\b|\.KP|\.KI|\.TI|\.TD|GAIN)",
                            re.IGNORECASE)


class Role(enum.IntEnum):
    """Session roles, ordered: a higher role may do everything a lower one may."""

    ANONYMOUS = 0
    VIEWER = 1
    OPERATOR = 2
    ENGINEER = 3

    @classmethod
    def parse(cls, text: str) -> Role:
        try:
            role = cls[text.strip().upper()]
        except KeyError:
            raise ValueError(f"unknown role {text!r}: use viewer, operator or engineer") from None
        if role is cls.ANONYMOUS:
            raise ValueError("anonymous is not a role a user can be given")
        return role


def required_role(tag: Tag) -> Role | None:
    """The lowest role that may write ``tag``; None when it is read-only for everyone."""
    if not tag.writable:
        return None
    explicit = getattr(tag.opcua, "write_role", None)
    if explicit:
        return Role.parse(explicit)
    return Role.ENGINEER if _ENGINEER_NAME.search(tag.name) else Role.OPERATOR


def to_variant_value(data_type: str, value: float):
    """Engineering value (float) -> the Python value of the tag's variant type."""
    if data_type in ("Float", "Double"):
        return float(value)
    if data_type == "Boolean":
        return bool(value >= 0.5)
    if not math.isfinite(value):
        raise ValueError(f"{value} cannot be sent as {data_type}")
    return int(round(value))


def from_variant_value(value) -> float:
    """Whatever the server sent (bool, int, float, None) -> float; None -> NaN."""
    if value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


@dataclass(frozen=True)
class TagEntry:
    tag: Tag
    identifier: str
    vtype: ua.VariantType
    role: Role | None

    @property
    def name(self) -> str:
        return self.tag.name

    def node_id(self, ns: int) -> ua.NodeId:
        return ua.NodeId(self.identifier, ns, ua.NodeIdType.String)

    def variant(self, value: float) -> ua.Variant:
        return ua.Variant(to_variant_value(self.tag.opcua.data_type, value), self.vtype)


class TagMap:
    """Name <-> NodeId identifier <-> variant type <-> write role for a set of tags."""

    def __init__(self, tags: Iterable[Tag], namespace_uri: str):
        self.namespace_uri = namespace_uri
        self.entries: dict[str, TagEntry] = {}
        self.by_identifier: dict[str, TagEntry] = {}
        for tag in tags:
            ident = tag.opcua.node_id or tag.name
            if ident in self.by_identifier:
                raise ValueError(f"tags {self.by_identifier[ident].name} and {tag.name} share node id {ident!r}")
            entry = TagEntry(tag, ident, VARIANT_TYPES[tag.opcua.data_type], required_role(tag))
            self.entries[tag.name] = entry
            self.by_identifier[ident] = entry

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self):
        return iter(self.entries.values())

    def __getitem__(self, name: str) -> TagEntry:
        return self.entries[name]

    def readable(self) -> list[TagEntry]:
        return list(self.entries.values())

    def writable(self) -> list[TagEntry]:
        return [e for e in self.entries.values() if e.role is not None]
