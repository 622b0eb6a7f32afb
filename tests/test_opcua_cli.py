"""``pilot opcua certs`` / ``browse`` and ``plc_sim`` input errors; browse against a live PLC."""

from __future__ import annotations

import asyncio
import time

import yaml
from typer.testing import CliRunner

from opcua_server.browse import browse
from opcua_server.node_interop import free_port
from opcua_server.security import certificate_uri
from opcua_server.server import PlcServer
from pilot.cli_opcua import opcua_app, plc_sim
from pilot_config import load_config
from twin.plant import TwinPlant

runner = CliRunner()


def test_certs_creates_certificate_key_and_folders(tmp_path):
    r = runner.invoke(opcua_app, ["certs", "--pki", str(tmp_path / "pki"), "--app-uri", "urn:site:plc"])
    assert r.exit_code == 0, r.output
    assert certificate_uri(tmp_path / "pki" / "own" / "cert.der") == "urn:site:plc"
    assert (tmp_path / "pki" / "own" / "private" / "key.pem").stat().st_mode & 0o077 == 0
    assert (tmp_path / "pki" / "trusted").is_dir()
    again = runner.invoke(opcua_app, ["certs", "--pki", str(tmp_path / "pki")])
    assert again.exit_code == 2 and "--overwrite" in again.output


def test_bad_input_gives_one_clear_line_no_traceback():
    port = free_port()
    r = runner.invoke(opcua_app, ["browse", f"opc.tcp://127.0.0.1:{port}"])
    assert r.exit_code == 2 and "cannot reach" in r.output and "Traceback" not in r.output
    r = runner.invoke(opcua_app, ["browse", "http://127.0.0.1:4840"])
    assert r.exit_code == 2 and "bad endpoint" in r.output
    import typer

    for kwargs, text in (({"endpoint": "opc.tcp://127.0.0.1:99999"}, "port"),
                         ({"endpoint": "opc.tcp://127.0.0.1"}, "give the port"),
                         ({"speed": 0}, "bad speed"), ({"security": "Basic128"}, "unknown security"),
                         ({"allow_anonymous": False}, "nobody could log in")):  # no users configured
        try:
            plc_sim(None, **kwargs)
        except typer.Exit as exc:
            assert exc.exit_code == 2
        else:
            raise AssertionError(f"{kwargs} accepted")


def test_browse_prints_a_tag_map_of_the_live_plc():
    config = load_config()

    async def go():
        port = free_port()
        server = PlcServer(config.tags, config.opcua.namespace_uri, TwinPlant(config), f"opc.tcp://127.0.0.1:{port}",
                           epoch_s=time.time())
        await server.start()
        try:
            return await browse(f"opc.tcp://127.0.0.1:{port}")
        finally:
            await server.stop()

    doc = yaml.safe_load(asyncio.run(go()))
    assert doc["opcua"]["namespace_uri"] == config.opcua.namespace_uri
    tags = {t["name"]: t for t in doc["tags"]}
    assert set(tags) >= {t.name for t in config.tags}
    flow = tags["ADS.FEED.FLOW_SP"]
    assert flow["kind"] == "setpoint" and flow["unit"] == "L/h" and (flow["low"], flow["high"]) == (0, 400)
    assert tags["ADS.FEED.FLOW"]["kind"] == "sensor" and tags["CELL1.ANODE_EFFECT"]["opcua"]["data_type"] == "Boolean"
