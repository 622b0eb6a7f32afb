"""``browse(url)``: walk a live server's Objects folder and print a tag-map YAML fragment.

Every Variable with a string NodeId outside namespace 0 becomes a tag: node id, data type,
writable (AccessLevel CurrentWrite -> kind setpoint, else sensor), EURange -> low/high,
EngineeringUnits -> unit, MinimumSamplingInterval -> sampling_interval_ms. ``signal`` is left as a
placeholder (``TODO.<unit>``) for the engineer to bind to a twin signal. The connection goes
through ``client_security.connect_client`` (endpoint choice, server certificate check, user).
"""

from __future__ import annotations

import re

import yaml
from asyncua import ua

from .client_security import ClientSecurity, connect_client
from .tagmap import VARIANT_TYPES

_TYPE_NAMES = {int(ua.VariantType[name]): name for name in VARIANT_TYPES}
_MAX_DEPTH = 6


def _tag_name(text: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.]+", "_", text).strip("._")
    name = re.sub(r"\.{2,}", ".", name)
    return name if name and name[0].isalpha() else f"T_{name}"


async def _walk(node, depth: int, out: list, parent_name: str, seen: set | None = None) -> None:
    seen = set() if seen is None else seen
    if depth > _MAX_DEPTH:
        return
    refs = await node.get_references(refs=ua.ObjectIds.HierarchicalReferences,
                                     direction=ua.BrowseDirection.Forward)
    for ref in refs:
        nid = ref.NodeId
        if nid.NamespaceIndex == 0 or nid in seen or ref.ReferenceTypeId == ua.NodeId(ua.ObjectIds.HasProperty):
            continue
        seen.add(nid)
        child = type(node)(node.session, nid)
        cls = await child.read_node_class()
        if cls == ua.NodeClass.Variable and isinstance(nid.Identifier, str):
            out.append((child, parent_name))
        elif cls == ua.NodeClass.Object:
            await _walk(child, depth + 1, out, (await child.read_browse_name()).Name, seen)


async def _property(node, name: str):
    try:
        prop = await node.get_child(f"0:{name}")
        return await prop.read_value()
    except ua.UaError:
        return None


async def _describe(node, unit_object: str, ns_uri: str) -> dict | None:
    dtype = await node.read_data_type()
    type_name = _TYPE_NAMES.get(dtype.Identifier) if dtype.NamespaceIndex == 0 else None
    if type_name is None:
        return None
    try:
        access = await node.read_attribute(ua.AttributeIds.AccessLevel)
        writable = bool(access.Value.Value & ua.AccessLevel.CurrentWrite.mask)
    except ua.UaError:
        writable = False
    rng, eu = await _property(node, "EURange"), await _property(node, "EngineeringUnits")
    try:
        msi = await node.read_attribute(ua.AttributeIds.MinimumSamplingInterval)
        interval = float(msi.Value.Value or 0)
    except ua.UaError:
        interval = 0.0
    try:
        desc = (await node.read_description()).Text or ""
    except ua.UaError:
        desc = ""
    opcua = {"node_id": node.nodeid.Identifier, "data_type": type_name}
    if interval > 0:
        opcua["sampling_interval_ms"] = max(interval, 100.0)
    return {
        "name": _tag_name(node.nodeid.Identifier),
        "signal": f"TODO.{_tag_name(unit_object)}",
        "kind": "setpoint" if writable else "sensor",
        "unit": eu.DisplayName.Text if eu is not None and eu.DisplayName.Text else "1",
        "low": float(rng.Low) if rng is not None else 0.0,
        "high": float(rng.High) if rng is not None else 1.0,
        **({"description": desc} if desc and desc != node.nodeid.Identifier else {}),
        "opcua": opcua,
    }


async def browse(url: str, namespace_uri: str | None = None, timeout_s: float = 5.0,
                 security: ClientSecurity | None = None) -> str:
    """A YAML fragment (``opcua:`` and ``tags:``) describing the server's variables."""
    client = await connect_client(url, security or ClientSecurity(), timeout_s=timeout_s, name="pilot-line browse")
    try:
        ns_array = await client.get_namespace_array()
        found: list = []
        await _walk(client.nodes.objects, 0, found, "objects")
        by_ns: dict[int, list] = {}
        for node, unit in found:
            by_ns.setdefault(node.nodeid.NamespaceIndex, []).append((node, unit))
        if namespace_uri is not None:
            if namespace_uri not in ns_array:
                raise ValueError(f"{url} has no namespace {namespace_uri!r}; it has {ns_array[1:]}")
            ns = ns_array.index(namespace_uri)
        elif by_ns:
            ns = max(by_ns, key=lambda k: len(by_ns[k]))
        else:
            raise ValueError(f"{url} exposes no variables with string node ids outside namespace 0")
        tags = [t for node, unit in by_ns.get(ns, []) if (t := await _describe(node, unit, ns_array[ns]))]
    finally:
        await client.disconnect()
    doc = {"opcua": {"namespace_uri": ns_array[ns], "endpoint": url}, "tags": tags}
    header = (f"# tag map browsed from {url}: {len(tags)} variables in {ns_array[ns]}\n"
              "# bind each tag's signal to a twin signal and check kind (sensor/analyser/actuator/setpoint/status)\n")
    return header + yaml.safe_dump(doc, sort_keys=False, width=120)
