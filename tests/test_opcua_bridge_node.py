"""Our bridge against node-opcua's server (a stack nobody here wrote), security None and
Basic256Sha256/SignAndEncrypt, with tight OperationLimits so every batching path is used."""

from __future__ import annotations

import asyncio
import time

import pytest

from opcua_server.bridge import OpcUaBridge
from opcua_server.client_security import ClientSecurity
from opcua_server.node_interop import (
    NodeScript,
    free_port,
    node_available,
)
from opcua_server.security import Pki, SecurityError
from pilot_config.tags import Tag
from twin.signals import Quality

pytestmark = pytest.mark.skipif(not node_available(), reason="node/npm not installed")
NS = "urn:pilot-line:node-test"
N, M = 60, 5


def node_tags(n: int = N, m: int = M, interval_ms: float = 200.0) -> list[Tag]:
    tags = [Tag(name=f"T{i}", signal="x.y", kind="sensor", unit="1", low=0, high=1000,
                opcua={"node_id": f"T{i}", "sampling_interval_ms": interval_ms, "queue_size": 2}) for i in range(n)]
    tags += [Tag(name=f"SP{k}", signal="x.y", kind="setpoint", unit="1", low=0, high=100,
                 opcua={"node_id": f"SP{k}", "sampling_interval_ms": 500}) for k in range(m)]
    return tags


@pytest.fixture()
def pkis(pki_pair):
    return pki_pair(("bridge", "urn:pilot-line:bridge"), ("node-server", "urn:pilot-line:node-server"))


def _server(port: int, secure: bool, ours: Pki, theirs: Pki, limits: str = "10,2,25") -> NodeScript:
    args = [port, NS, N, M, 5]
    if secure:
        args += [theirs.cert.with_suffix(".pem"), theirs.key, "urn:pilot-line:node-server",
                 ours.cert, theirs.root / "node-pki"]
    return NodeScript("tag_server.js", *args, env={"LIMITS": limits})


async def _exercise(url: str, security: ClientSecurity) -> dict:
    got: dict[str, list] = {}
    bridge = OpcUaBridge(url, node_tags(), NS, security=security,
                         listener=lambda n, s: got.setdefault(n, []).append((time.time(), s)))
    async with bridge:
        await asyncio.sleep(1.6)
        snap = await bridge.read()
        wrote = await bridge.write({f"SP{k}": 10.5 + k for k in range(M)} | {"SP0": 10.5, "T1": 3.0})
        back = await bridge.read_now([f"SP{k}" for k in range(M)])
        out_of_range = await bridge.write({"SP1": 1000.0})
        return {"bridge": bridge, "snap": snap, "got": got, "wrote": wrote, "back": back, "oor": out_of_range}


def _check(r: dict) -> None:
    bridge = r["bridge"]
    assert bridge._limits == {"read": 10, "write": 2, "monitor": 25}  # the server's OperationLimits
    assert bridge.monitored == N + M  # created in batches of 25
    snap = r["snap"]
    assert all(snap[f"T{i}"].quality == Quality.GOOD for i in range(N))
    for i in range(N):
        series = r["got"][f"T{i}"]
        assert len(series) >= 5, (i, len(series))  # ~5 Hz changes for 1.6 s
        assert all(abs(rx - s.source_time) < 1.0 for rx, s in series)  # source timestamps kept
    assert set(r["wrote"].accepted) == {f"SP{k}" for k in range(M)}  # 3 write batches of <= 2
    assert r["wrote"].refused == {"T1": "read-only (sensor)"}
    assert all(r["back"][f"SP{k}"].value == pytest.approx(10.5 + k) for k in range(M))  # read in batches of 10
    assert "out of range" in r["oor"].refused["SP1"]


def test_bridge_against_node_server_no_security(node_modules, pkis):
    port = free_port()
    with _server(port, False, *pkis):
        _check(asyncio.run(_exercise(f"opc.tcp://127.0.0.1:{port}", ClientSecurity("None", "None", pkis[0]))))


def test_bridge_against_node_server_sign_and_encrypt(node_modules, pkis):
    ours, theirs = pkis
    import shutil

    shutil.copy(theirs.cert, ours.trusted / "node-server.der")  # we trust the node server
    port = free_port()
    with _server(port, True, ours, theirs):
        _check(asyncio.run(_exercise(f"opc.tcp://127.0.0.1:{port}", ClientSecurity(mode="SignAndEncrypt", pki=ours))))


def test_bridge_refuses_untrusted_node_server_naming_the_file(node_modules, pkis):
    ours, theirs = pkis  # node server's certificate not in our trust list
    port = free_port()
    with _server(port, True, ours, theirs):
        async def go():
            with pytest.raises(SecurityError) as err:
                await OpcUaBridge(f"opc.tcp://127.0.0.1:{port}", node_tags(), NS,
                                  security=ClientSecurity(mode="SignAndEncrypt", pki=ours)).start()
            return str(err.value)
        msg = asyncio.run(go())
    rejected = list(ours.rejected.glob("*.der"))
    assert len(rejected) == 1
    assert str(rejected[0]) in msg and str(ours.trusted) in msg
