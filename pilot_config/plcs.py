"""The line's PLCs: which OPC UA server serves which tags.

``opcua.plcs`` lists the PLCs (typically one per area, each its own endpoint and namespace). A tag
belongs to the PLC whose ``units`` name its plant unit (``Tag.plant_unit``, the first part of its
signal), unless the tag names its PLC itself (``opcua: {plc: NAME}``, which wins). One PLC may
leave ``units`` empty: it then serves every tag no other PLC claims. Without ``opcua.plcs`` the
line has one PLC named ``plc`` at ``opcua.endpoint`` with namespace ``opcua.namespace_uri`` and
every tag (the tags' ``opcua.plc`` are then not used); those two keys keep meaning "every tag on
one server" for tools that serve the whole line from one endpoint.

``assign_tags`` is the pure rule; ``PilotLineConfig`` runs it when the file is loaded and reports
every problem with its YAML path (unknown unit or PLC, a unit claimed twice, a tag on no PLC, a
PLC with no tag, repeated names, endpoints or namespaces).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlparse

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from .base import StrictModel
from .tags import Tag

PLC_NAME_PATTERN = r"^[a-z][a-z0-9_-]*$"
SINGLE_PLC_NAME = "plc"
SecurityPolicyName = Literal["auto", "None", "Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss"]
SecurityModeName = Literal["auto", "None", "Sign", "SignAndEncrypt"]


def check_opc_tcp(url: str) -> str:
    """opc.tcp://HOST:PORT[/path], no credentials; raises ValueError saying what is expected."""
    parsed = urlparse(url)
    if "@" in parsed.netloc:
        raise ValueError("credentials do not belong in an endpoint URL (it is logged and shown)")
    if parsed.scheme != "opc.tcp" or not parsed.hostname:
        raise ValueError("expected opc.tcp://HOST:PORT, e.g. opc.tcp://127.0.0.1:4840")
    try:
        port = parsed.port
    except ValueError:
        port = None
    if not port:
        raise ValueError(f"give the port as a number 1..65535, e.g. opc.tcp://{parsed.hostname}:4840")
    return url


def check_plc_name(name: str) -> str:
    """A PLC name: lower case letter, then letters, digits, _ or -; at most 40 characters."""
    if not re.fullmatch(PLC_NAME_PATTERN, name) or len(name) > 40:
        raise ValueError("a PLC name is a lower-case letter followed by lower-case letters, digits, _ or - "
                         "(at most 40), e.g. electrolysis")
    return name


def endpoint_key(url: str) -> tuple[str, int]:
    """(host, port) of an endpoint: two PLCs cannot listen on the same one."""
    parsed = urlparse(url)
    return (parsed.hostname or "").lower(), parsed.port or 0


class PlcConfig(StrictModel):
    """One PLC of the line: its OPC UA server, namespace and the plant units it serves."""

    name: str = Field(description="lower case, unique: link-status tag PLC.<name>.LINK, alarm PLC.<name>.COMM")
    endpoint: str = Field(description="opc.tcp://HOST:PORT of the PLC's OPC UA server")
    namespace_uri: str = Field(min_length=1, description="namespace of the PLC's tags on that server")
    units: list[str] = Field(default_factory=list, description=(
        "plant units (first part of a tag's signal) whose tags this PLC serves; empty on one PLC: "
        "every tag no other PLC claims"))
    security_policy: SecurityPolicyName = Field("auto", description="pin of the client's policy for this PLC")
    security_mode: SecurityModeName = Field("auto", description="pin of the client's mode for this PLC")
    description: str = ""

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_plc_name(v)

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        return check_opc_tcp(v)

    @model_validator(mode="after")
    def _security_pair(self) -> "PlcConfig":
        policy, mode = self.security_policy, self.security_mode
        if "auto" not in (policy, mode) and (policy == "None") != (mode == "None"):
            raise ValueError(f"security_policy {policy} cannot go with security_mode {mode}: policy None goes "
                             "with mode None only, the other policies with Sign or SignAndEncrypt")
        return self


def _repeats(plcs: Sequence[PlcConfig]) -> list[tuple[tuple, str, str]]:
    """(location, message, value) of every repeated name, endpoint or namespace."""
    out = []
    for field, key in (("name", lambda p: p.name), ("endpoint", lambda p: endpoint_key(p.endpoint)),
                       ("namespace_uri", lambda p: p.namespace_uri)):
        seen: dict = {}
        for i, p in enumerate(plcs):
            k = key(p)
            if k in seen:
                out.append((("plcs", i, field), f"{field} repeated: PLC {plcs[seen[k]].name!r} "
                            f"(opcua.plcs.{seen[k]}) has it already; every PLC needs its own", getattr(p, field)))
            else:
                seen[k] = i
    return out


def raise_located(title: str, issues: Sequence[tuple[tuple, str, object]]) -> None:
    """Raise a ValidationError whose errors keep their own YAML locations (the loader shows each
    with its line)."""
    if issues:
        raise ValidationError.from_exception_data(title, [
            {"type": PydanticCustomError("plc_assignment", "{message}", {"message": msg}), "loc": loc,
             "input": value} for loc, msg, value in issues])


class OpcUaConfig(StrictModel):
    """The OPC UA side of the line: one server (``endpoint``, ``namespace_uri``) or several PLCs."""

    namespace_uri: str = Field("urn:pilot-line:plc", min_length=1,
                               description="namespace of every tag when one server serves the whole line")
    endpoint: str = Field("opc.tcp://127.0.0.1:4840", pattern=r"^opc\.tcp://",
                          description="that one server (the single-PLC form)")
    plcs: list[PlcConfig] = Field(default_factory=list, description="the line's PLCs (empty: one, named plc)")

    @model_validator(mode="after")
    def _unique(self) -> "OpcUaConfig":
        raise_located("OpcUaConfig", _repeats(self.plcs))
        return self

    def resolved_plcs(self) -> list[PlcConfig]:
        """The PLCs; without ``plcs``, one named ``plc`` at ``endpoint`` serving every tag."""
        if self.plcs:
            return list(self.plcs)
        return [PlcConfig(name=SINGLE_PLC_NAME, endpoint=self.endpoint, namespace_uri=self.namespace_uri)]


@dataclass(frozen=True)
class Assignment:
    """Every tag's PLC, or the problems that prevent it (``issues``: (YAML location, message, value))."""

    plc_of: dict[str, str]
    issues: tuple[tuple[tuple, str, object], ...] = ()


def _unit_owners(plcs: Sequence[PlcConfig], known_units: set[str], issues: list) -> dict[str, str]:
    owner: dict[str, str] = {}
    for i, p in enumerate(plcs):
        for j, unit in enumerate(p.units):
            loc = ("opcua", "plcs", i, "units", j)
            if unit not in known_units:
                issues.append((loc, f"unknown plant unit {unit!r}; the tags' units are: "
                               f"{', '.join(sorted(known_units))}", unit))
            elif unit in owner and owner[unit] != p.name:
                issues.append((loc, f"unit {unit!r} is claimed by PLC {owner[unit]!r} already: a unit "
                               "belongs to one PLC (move single tags with opcua: {plc: NAME})", unit))
            else:
                owner.setdefault(unit, p.name)
    return owner


def assign_tags(plcs: Sequence[PlcConfig], tags: Sequence[Tag]) -> Assignment:
    """Each tag's PLC: its explicit ``opcua.plc``, else the PLC claiming its unit, else the one PLC
    with empty ``units``. Locations are relative to the whole config (``tags``, ``opcua.plcs``).
    The single-PLC form (one PLC named ``plc`` with every tag) ignores the tags' ``opcua.plc``, so
    a line split over PLCs can be served from one server by leaving ``opcua.plcs`` out."""
    if len(plcs) == 1 and plcs[0].name == SINGLE_PLC_NAME and not plcs[0].units:
        return Assignment({t.name: SINGLE_PLC_NAME for t in tags})
    issues: list = []
    names = [p.name for p in plcs]
    owner = _unit_owners(plcs, {t.plant_unit for t in tags}, issues)
    catch_all = [i for i, p in enumerate(plcs) if not p.units]
    for i in catch_all[1:]:
        issues.append((("opcua", "plcs", i, "units"), f"only one PLC may leave units empty (PLC "
                       f"{plcs[catch_all[0]].name!r} does already: it serves every tag no other PLC claims)", []))
    fallback = plcs[catch_all[0]].name if catch_all else None
    plc_of: dict[str, str] = {}
    for i, t in enumerate(tags):
        if t.opcua.plc is not None:
            if t.opcua.plc not in names:
                issues.append((("tags", i, "opcua", "plc"), f"unknown PLC {t.opcua.plc!r} for tag {t.name}; "
                               f"the PLCs are: {', '.join(names)}", t.opcua.plc))
                continue
            plc_of[t.name] = t.opcua.plc
        elif (name := owner.get(t.plant_unit, fallback)) is not None:
            plc_of[t.name] = name
        else:
            issues.append((("tags", i), f"tag {t.name} (unit {t.plant_unit}) is on no PLC: add {t.plant_unit!r} "
                           f"to the units of one of opcua.plcs ({', '.join(names)}) or give the tag "
                           "opcua: {plc: NAME}", t.name))
    served = set(plc_of.values())
    for i, p in enumerate(plcs):
        if p.name not in served and not any(loc[:3] == ("opcua", "plcs", i) for loc, _, _ in issues):
            issues.append((("opcua", "plcs", i), f"PLC {p.name!r} serves no tag: give it units or remove it",
                           p.name))
    return Assignment(plc_of, tuple(issues))
