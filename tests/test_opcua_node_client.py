"""node-opcua's client (a stack nobody here wrote) against our simulated PLC serving the real twin."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import time

import pytest

from opcua_server.node_interop import (
    NodeScript,
    free_port,
    node_available,
)
from opcua_server.server import PlcServer
from opcua_server.server_security import ServerSecurity, parse_endpoints
from opcua_server.users import UserDirectory
from pilot_config import load_config
from twin.plant import TwinPlant

pytestmark = pytest.mark.skipif(not node_available(), reason="node/npm not installed")


@pytest.fixture(scope="module")
def config():
    return load_config()


@pytest.fixture()
def pkis(pki_pair):
    return pki_pair(("server", "urn:pilot-line:plc-sim"), ("node-client", "urn:pilot-line:node-client"))


async def _serve_and_run(config, security: ServerSecurity, argv: list[str]) -> tuple[str | Exception, PlcServer]:
    plant = TwinPlant(config, seed=0)
    port = free_port()
    server = PlcServer(config.tags, config.opcua.namespace_uri, plant, f"opc.tcp://127.0.0.1:{port}",
                       security=security, epoch_s=time.time())
    await server.start()
    stop = asyncio.Event()
    scan = asyncio.create_task(server.run(speed=60.0, stop=stop))
    try:
        script = NodeScript("plc_client.js", f"opc.tcp://127.0.0.1:{port}", config.opcua.namespace_uri, *argv)
        try:
            out = await asyncio.to_thread(script.run, 90)
        except RuntimeError as exc:
            out = exc
    finally:
        stop.set()
        await scan
        await server.stop()
    return out, server


def _result(stdout: str) -> dict:
    lines = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, stdout
    return json.loads(lines[-1][len("RESULT "):])


OP_PASSWORD = "operator-secret-1"


def _users() -> UserDirectory:
    users = UserDirectory()
    users.add("op", OP_PASSWORD, "operator")
    return users


@pytest.mark.parametrize("mode", ["None", "SignAndEncrypt"])
def test_node_client_against_plc_server(node_modules, config, pkis, mode):
    server_pki, client_pki = pkis
    shutil.copy(client_pki.cert, server_pki.trusted / "node-client.der")
    security = ServerSecurity(endpoints=parse_endpoints("None,Sign,SignAndEncrypt"), pki=server_pki, users=_users(),
                              allow_anonymous=True)  # the script's first session is anonymous
    argv = [mode, "op", OP_PASSWORD]
    if mode != "None":
        argv += [str(client_pki.cert.with_suffix(".pem")), str(client_pki.key), "urn:pilot-line:node-client"]
    out, server = asyncio.run(_serve_and_run(config, security, argv))
    assert not isinstance(out, Exception), out
    r = _result(out)
    assert r["ns"] >= 1
    assert r["units"] == sorted({"Diagnostics", "adsorption", "cell1", "cell2", "distillation", "eluate_tank",
                                 "extraction", "plc"})
    assert r["tag_count"] == len(config.tags) + 4  # + the diagnostics variables
    n_analog = sum(t.opcua.data_type in ("Float", "Double") for t in config.tags)
    assert r["analog_items"] == n_analog
    assert r["flow"]["dataType"] == "Float" and r["flow"]["status"] == "Good"
    assert 200 < r["flow"]["value"] < 300
    assert r["eurange"] == {"low": 0, "high": 500} and r["unit"] == "L/h"
    assert r["anonymous_write"] == "BadUserAccessDenied"
    assert r["read_only_write"] == "BadNotWritable"
    assert len(r["heartbeats"]) >= 2 and r["heartbeats"] == sorted(r["heartbeats"])
    assert r["operator_write"] == "Good"
    assert r["out_of_range_write"] == "BadOutOfRange"
    assert r["after_refused"] == pytest.approx(123.0)  # the refused write changed nothing
    assert r["operator_limit_write"] == "BadUserAccessDenied"  # a limit needs the engineer
    assert server.writes_refused == 4


def test_untrusted_node_client_is_refused_naming_the_file(node_modules, config, pkis, caplog):
    server_pki, client_pki = pkis  # the client's certificate is NOT in the server's trust list
    security = ServerSecurity(endpoints=parse_endpoints("SignAndEncrypt"), pki=server_pki, users=_users(),
                              allow_anonymous=True)
    argv = ["SignAndEncrypt", "op", OP_PASSWORD, str(client_pki.cert.with_suffix(".pem")), str(client_pki.key),
            "urn:pilot-line:node-client"]
    with caplog.at_level(logging.WARNING, logger="opcua_server.security"):
        out, _ = asyncio.run(_serve_and_run(config, security, argv))
    assert isinstance(out, Exception)
    rejected = list(server_pki.rejected.glob("*.der"))
    assert len(rejected) == 1 and "node-client" in rejected[0].name
    msg = [r.getMessage() for r in caplog.records if "untrusted client certificate" in r.getMessage()]
    assert msg and str(rejected[0]) in msg[0] and str(server_pki.trusted) in msg[0]
