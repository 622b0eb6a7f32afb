"""Several PLCs: the config (validation with file, line and YAML path; which PLC serves which tag),
`pilot config check`, and `pilot plc-sim` serving the shipped line's four PLCs from one twin (each
namespace exactly its tags, writes through to the shared twin, a heartbeat per server) or one PLC
per process (`--plc`), secured as every server face."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from asyncua import Client, ua
from pydantic import ValidationError
from typer.testing import CliRunner

from opcua_server.client_security import ClientSecurity, connect_client
from opcua_server.node_interop import free_port, wait_port
from opcua_server.plc_sim import run_plc_sim, serve_plan
from opcua_server.security import Pki, ensure_certificate
from opcua_server.server_security import ServerSecurity
from opcua_server.users import UserDirectory
from pilot.cli import app
from pilot.cli_run import parse_plcs
from pilot_config import (
    ConfigError,
    conventional_config_path,
    default_config_path,
    load_config,
)
from pilot_config.plant import PilotLineConfig
from pilot_config.plcs import OpcUaConfig, PlcConfig, assign_tags
from twin.plant import TwinPlant

OP_PW = "topology-operator-pw"
USERS = f"op:operator:{OP_PW}"
SHIPPED_PLCS = {"adsorption": 4840, "extraction": 4841, "electrolysis": 4842, "distillation": 4843}
ORIGINAL_OPCUA = """opcua:
  namespace_uri: urn:pilot-line:plc
  endpoint: opc.tcp://127.0.0.1:4840
"""


@pytest.fixture(scope="module")
def config():
    return load_config()


def _shipped_text() -> str:
    return default_config_path().read_text(encoding="utf-8")


def _unassigned_text() -> str:
    """The shipped line without the tags' explicit ``opcua.plc``."""
    text = re.sub(r", opcua: \{plc: [a-z]+\}\}", "}", _shipped_text())
    return re.sub(r"opcua: \{plc: [a-z]+, ", "opcua: {", text)


def _with_opcua(tmp_path: Path, plcs_yaml: str, text: str | None = None) -> Path:
    """The shipped line (without explicit ``opcua.plc``) with its ``opcua`` section replaced
    (``plcs_yaml``: lines under ``plcs:``)."""
    text = text if text is not None else _unassigned_text()
    start = text.index("\nopcua:\n") + 1
    end = text.index("\nsimulation:\n")
    section = ORIGINAL_OPCUA + ("  plcs:\n" + plcs_yaml if plcs_yaml else "") + "\n"
    path = tmp_path / "line.yaml"
    path.write_text(text[:start] + section + text[end:], encoding="utf-8")
    return path


def _issues(path: Path) -> list:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value.issues


def _line_of(path: Path, needle: str) -> int:
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if needle in line:
            return i
    raise AssertionError(needle)


def _plc(name, port, ns=None, units="[]", extra="") -> str:
    return (f"    - {{name: {name}, endpoint: 'opc.tcp://127.0.0.1:{port}', "
            f"namespace_uri: '{ns or 'urn:t:' + name}', units: {units}{extra}}}\n")


# -- resolution ------------------------------------------------------------------------------
def test_shipped_lines_have_one_plc_per_area_with_their_tags(config):
    for line in (config, load_config(conventional_config_path())):
        plcs = line.opcua.resolved_plcs()
        assert {p.name: int(p.endpoint.rsplit(":", 1)[1]) for p in plcs} == SHIPPED_PLCS
        assert [p.namespace_uri for p in plcs] == [f"urn:pilot-line:plc:{n}" for n in SHIPPED_PLCS]
        tags = line.plc_tags()
        assert sum(len(v) for v in tags.values()) == len(line.tags)  # every tag exactly once
        assert {t.plant_unit for t in tags["adsorption"]} == {"adsorption", "eluate_tank", "plc"}
        assert {t.plant_unit for t in tags["electrolysis"]} == {"cell1", "cell2", "plc"}
        assert {t.plant_unit for t in tags["extraction"]} == {"extraction"}
        assert [t.name for t in tags["distillation"]] == ["DIST.TEMP", "DIST.PHASE", "DIST.RESIDUAL"]
    # the PLC-block tags sit with the unit they belong to
    assert config.plc_of("ADS.BT_LIMIT_SP") == "adsorption" and config.plc_of("CELL2.REMOTE") == "electrolysis"
    assert config.plc_of("TANK.LEVEL") == "adsorption" and config.plc_of("SX.TB_PURITY") == "extraction"
    with pytest.raises(KeyError):
        config.plc_of("NO.SUCH.TAG")
    # the single-server meaning of opcua.endpoint / namespace_uri is kept
    assert (config.opcua.endpoint, config.opcua.namespace_uri) == ("opc.tcp://127.0.0.1:4840", "urn:pilot-line:plc")


def test_single_endpoint_form_is_one_plc_named_plc(tmp_path):
    line = load_config(_with_opcua(tmp_path, ""))
    (only,) = line.opcua.resolved_plcs()
    assert (only.name, only.endpoint, only.namespace_uri, only.units) == (
        "plc", "opc.tcp://127.0.0.1:4840", "urn:pilot-line:plc", [])
    assert list(line.plc_tags()) == ["plc"] and len(line.plc_tags()["plc"]) == len(line.tags)
    assert {line.plc_of(t.name) for t in line.tags} == {"plc"}
    assert OpcUaConfig().resolved_plcs()[0].name == "plc"


def test_units_explicit_plc_and_the_catch_all(config):
    tags = [t.model_copy(update={"opcua": t.opcua.model_copy(update={"plc": None})}) for t in config.tags]
    plcs = [PlcConfig(name="cells", endpoint="opc.tcp://h:1", namespace_uri="urn:c", units=["cell1", "cell2"]),
            PlcConfig(name="rest", endpoint="opc.tcp://h:2", namespace_uri="urn:r")]
    result = assign_tags(plcs, tags)
    assert result.issues == ()
    # explicit opcua.plc wins over units
    moved = [t.model_copy(update={"opcua": t.opcua.model_copy(update={"plc": "rest"})}) if t.name == "CELL1.CURRENT"
             else t for t in tags]
    result = assign_tags(plcs, moved)
    assert result.issues == ()
    assert result.plc_of["CELL1.CURRENT"] == "rest" and result.plc_of["CELL1.VOLTAGE"] == "cells"
    assert result.plc_of["CELL1.TEMP_SP"] == "rest"  # unit plc: not claimed, so the catch-all's
    assert result.plc_of["SX.ORG.FLOW"] == "rest"


# -- validation: every error with file, line, YAML path and what is allowed -----------------------------
def test_unknown_unit_and_unit_claimed_twice(tmp_path):
    path = _with_opcua(tmp_path, _plc("a", 5001, units="[adsorption, eluate_tank, ion_exchange]")
                       + _plc("b", 5002, units="[extraction, cell1, cell2, distillation, adsorption]"))
    found = {i.path: i for i in _issues(path)}
    unknown = found["opcua.plcs.0.units.2"]
    assert unknown.line == _line_of(path, "ion_exchange") and unknown.file == str(path)
    assert "unknown plant unit 'ion_exchange'" in unknown.message and "cell1, cell2, distillation" in unknown.message
    twice = found["opcua.plcs.1.units.4"]
    assert "unit 'adsorption' is claimed by PLC 'a' already" in twice.message
    assert twice.line == _line_of(path, "name: b,")


def test_tag_on_no_plc_and_unknown_plc_of_a_tag(tmp_path):
    text = _shipped_text().replace("{name: DIST.TEMP, signal:", "{name: DIST.TEMP, opcua: {plc: vacuum}, signal:")
    text = text.replace("opcua: {plc: adsorption}", "opcua: {}")  # ADS.BT_LIMIT_SP: unit plc, unclaimed
    text = text.replace("plc: electrolysis", "plc: x")
    path = _with_opcua(tmp_path, _plc("a", 5001, units="[adsorption, eluate_tank]")
                       + _plc("x", 5002, units="[extraction, cell1, cell2, distillation]"), text)
    issues = _issues(path)
    by_path = {i.path: i for i in issues}
    ghost = next(i for p, i in by_path.items() if p.endswith(".opcua.plc"))
    assert "unknown PLC 'vacuum' for tag DIST.TEMP; the PLCs are: a, x" in ghost.message
    assert ghost.line == _line_of(path, "name: DIST.TEMP")
    homeless = [i for i in issues if "is on no PLC" in i.message]
    assert [i.message.split(" (")[0] for i in homeless] == ["tag ADS.BT_LIMIT_SP"]
    assert homeless[0].line == _line_of(path, "name: ADS.BT_LIMIT_SP") and "opcua: {plc: NAME}" in homeless[0].message
    assert re.fullmatch(r"tags\.\d+", homeless[0].path)


def test_repeated_names_endpoints_namespaces(tmp_path):
    path = _with_opcua(tmp_path, _plc("a", 5001, "urn:same", "[adsorption, eluate_tank]")
                       + _plc("a", 5001, "urn:same", "[extraction]")
                       + "    - {name: c, endpoint: 'opc.tcp://LOCALHOST:5003', namespace_uri: 'urn:c'}\n"
                       + "    - {name: d, endpoint: 'opc.tcp://localhost:5003', namespace_uri: 'urn:d'}\n")
    found = {i.path: i.message for i in _issues(path)}
    assert found["opcua.plcs.1.name"].startswith("name repeated: PLC 'a' (opcua.plcs.0)")
    assert found["opcua.plcs.1.endpoint"].startswith("endpoint repeated")
    assert found["opcua.plcs.1.namespace_uri"].startswith("namespace_uri repeated")
    assert found["opcua.plcs.3.endpoint"].startswith("endpoint repeated: PLC 'c'")  # host case-insensitive


def test_bad_fields_and_two_catch_alls(tmp_path):
    path = _with_opcua(tmp_path, "    - {name: Cells, endpoint: 'opc.tcp://h', namespace_uri: 'urn:x', "
                       "security_policy: Basic128Rsa15, security_mode: Sign}\n"
                       + _plc("b", 5002, extra=", security_policy: None, security_mode: SignAndEncrypt"))
    found = {i.path: i.message for i in _issues(path)}
    assert "lower-case letter" in found["opcua.plcs.0.name"]
    assert "give the port" in found["opcua.plcs.0.endpoint"]
    assert "'auto', 'None', 'Basic256Sha256'" in found["opcua.plcs.0.security_policy"]
    assert "policy None goes with mode None only" in found["opcua.plcs.1"]
    path = _with_opcua(tmp_path, _plc("a", 5001) + _plc("b", 5002))
    assert ["only one PLC may leave units empty" in i.message for i in _issues(path)] == [True]


def test_a_plc_without_tags_is_refused(config):
    """Every tag of the unit it claims is placed elsewhere by name."""
    tags = [t.model_dump() | {"opcua": t.model_dump()["opcua"] | {"plc": "line"}} for t in config.tags]
    with pytest.raises(ValidationError) as info:
        PilotLineConfig.model_validate({**config.model_dump(), "tags": tags, "opcua": {"plcs": [
            {"name": "line", "endpoint": "opc.tcp://h:1", "namespace_uri": "urn:l"},
            {"name": "spare", "endpoint": "opc.tcp://h:2", "namespace_uri": "urn:s", "units": ["plc"]}]}})
    (error,) = info.value.errors()
    assert error["loc"] == ("opcua", "plcs", 1) and "PLC 'spare' serves no tag" in error["msg"]


def test_config_check_prints_the_plcs_and_their_tag_counts(tmp_path):
    r = CliRunner().invoke(app, ["config", "check", str(default_config_path())], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "4 PLCs:" in r.output
    assert "adsorption: 34 tags at opc.tcp://127.0.0.1:4840 (namespace urn:pilot-line:plc:adsorption" in r.output
    assert "electrolysis: 36 tags at opc.tcp://127.0.0.1:4842" in r.output and "distillation: 3 tags" in r.output
    bad = _with_opcua(tmp_path, _plc("a", 5001, units="[adsorption, nowhere]"))
    r = CliRunner().invoke(app, ["config", "check", str(bad)], env={"COLUMNS": "200"})
    assert r.exit_code == 2 and f"{bad}:{_line_of(bad, 'nowhere')}: opcua.plcs.0.units.1: unknown plant unit" in r.output
    assert "Traceback" not in r.output


# -- plc-sim ---------------------------------------------------------------------------------
def test_serve_plan(config):
    every = serve_plan(config)
    assert [(p.name, p.endpoint, len(p.tags)) for p in every] == [
        ("adsorption", "opc.tcp://127.0.0.1:4840", 34), ("extraction", "opc.tcp://127.0.0.1:4841", 23),
        ("electrolysis", "opc.tcp://127.0.0.1:4842", 36), ("distillation", "opc.tcp://127.0.0.1:4843", 3)]
    (one,) = serve_plan(config, ["electrolysis"], {"electrolysis": "opc.tcp://h:9"})
    assert (one.endpoint, one.namespace_uri) == ("opc.tcp://h:9", "urn:pilot-line:plc:electrolysis")
    (all_tags,) = serve_plan(config, endpoint="opc.tcp://h:7")  # the single-server meaning
    assert (all_tags.namespace_uri, len(all_tags.tags)) == ("urn:pilot-line:plc", len(config.tags))
    assert serve_plan(config, ["extraction"], endpoint="opc.tcp://h:8")[0].endpoint == "opc.tcp://h:8"
    for args, text in ((("ghost",), "unknown PLC ghost: the PLCs of pilot-line-new-extractant are adsorption"),
                       (("extraction", "extraction"), "named twice")):
        with pytest.raises(ValueError, match=text):
            serve_plan(config, list(args))
    with pytest.raises(ValueError, match="give NAME=URL"):
        serve_plan(config, ["extraction", "distillation"], endpoint="opc.tcp://h:8")


async def _namespace_tags(client: Client, uri: str) -> set[str]:
    ns = (await client.get_namespace_array()).index(uri)
    root = client.get_node(ua.NodeId("PLC", ns))
    names = set()
    for unit in await root.get_children():
        if unit.nodeid.Identifier == "Diagnostics":
            continue
        names |= {c.nodeid.Identifier for c in await unit.get_children() if c.nodeid.NamespaceIndex == ns}
    return names


async def _heartbeat(client: Client, uri: str) -> int:
    ns = (await client.get_namespace_array()).index(uri)
    return await client.get_node(ua.NodeId("Diagnostics.Heartbeat", ns)).read_value()


def test_plc_sim_serves_the_four_plcs_from_one_twin(config):
    urls = {name: f"opc.tcp://127.0.0.1:{free_port()}" for name in SHIPPED_PLCS}
    plant = TwinPlant(config, seed=0)
    security = ServerSecurity(users=UserDirectory.parse(USERS, "test"), allow_anonymous=False)
    expected = {name: {t.name for t in tags} for name, tags in config.plc_tags().items()}

    async def main():
        stop, started = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(run_plc_sim(config, speed=60.0, plant=plant, security=security, stop=stop,
                                               started=started, endpoints=urls))
        await asyncio.wait_for(started.wait(), 60)
        clients = {}
        try:
            for name, url in urls.items():
                c = Client(url, timeout=5)
                c.set_user("op")
                c.set_password(OP_PW)
                await c.connect()
                clients[name] = c
            found, beats = {}, {}
            for name, c in clients.items():
                uri = f"urn:pilot-line:plc:{name}"
                others = set(await c.get_namespace_array()) & {f"urn:pilot-line:plc:{n}" for n in SHIPPED_PLCS}
                assert others == {uri}, name  # each server holds its own namespace only
                found[name] = await _namespace_tags(c, uri)
                beats[name] = await _heartbeat(c, uri)
            # writes through two servers land in the one twin
            for name, tag, value in (("electrolysis", "CELL1.CURRENT_SP", 187.0), ("adsorption", "ADS.FEED.FLOW_SP", 123.0)):
                ns = (await clients[name].get_namespace_array()).index(f"urn:pilot-line:plc:{name}")
                node = clients[name].get_node(ua.NodeId(tag, ns))
                await node.write_value(ua.DataValue(ua.Variant(value, ua.VariantType.Float)))
            # a tag of another PLC is not on this server
            ns = (await clients["distillation"].get_namespace_array()).index("urn:pilot-line:plc:distillation")
            with pytest.raises(ua.UaStatusCodeError):
                await clients["distillation"].get_node(ua.NodeId("CELL1.CURRENT_SP", ns)).read_value()
            deadline = time.monotonic() + 10
            later = dict(beats)
            while time.monotonic() < deadline and not all(later[n] > beats[n] for n in later):
                await asyncio.sleep(0.2)
                later = {n: await _heartbeat(c, f"urn:pilot-line:plc:{n}") for n, c in clients.items()}
            return found, beats, later
        finally:
            for c in clients.values():
                await c.disconnect()
            stop.set()
            await asyncio.wait_for(task, 30)

    found, beats, later = asyncio.run(main())
    assert found == expected
    assert all(later[n] > beats[n] for n in SHIPPED_PLCS), (beats, later)  # each server beats
    snap = plant.snapshot()
    assert snap["CELL1.CURRENT_SP"].value == pytest.approx(187.0)
    assert snap["ADS.FEED.FLOW_SP"].value == pytest.approx(123.0)


def _plc_sim(argv: list[str], pki: Path) -> subprocess.Popen:
    env = {**os.environ, "PILOT_OPCUA_USERS": USERS, "PILOT_OPCUA_ANONYMOUS": "0"}
    env.pop("PILOT_OPCUA_ENDPOINT", None)
    env.pop("PILOT_OPCUA_SECRETS", None)
    return subprocess.Popen([sys.executable, "-m", "pilot", "plc-sim", *argv, "--security",
                             "Basic256Sha256:SignAndEncrypt", "--pki", str(pki), "--no-anonymous", "--speed", "30"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_listening(proc: subprocess.Popen, port: int, timeout_s: float = 90) -> None:
    """Until ``port`` accepts connections; the process's stderr if it ended first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"plc-sim ended with {proc.returncode}: {proc.stderr.read()}")
        try:
            wait_port(port, 0.5)
            return
        except TimeoutError:
            continue
    raise TimeoutError(f"nothing listening on {port} after {timeout_s} s")


def _stop(proc: subprocess.Popen, sig=signal.SIGKILL) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
    proc.wait(timeout=30)


def test_plc_option_serves_one_plc_secured_and_dies_alone(config, tmp_path):
    """Two processes, one PLC each (as a test that kills one PLC does): SignAndEncrypt only, users,
    no anonymous; kill -9 of one leaves the other serving."""
    pki = Pki(tmp_path / "pki")
    ensure_certificate(pki)  # created once before both start (as pki-init does), shared by the client
    ports = {"distillation": free_port(), "extraction": free_port()}
    procs = {n: _plc_sim(["--plc", n, "--endpoint", f"{n}=opc.tcp://127.0.0.1:{p}"], pki.root)
             for n, p in ports.items()}
    security = ClientSecurity(pki=pki, username="op", password=OP_PW)

    async def tags_of(name: str) -> tuple[set[str], set[str]]:
        c = await connect_client(f"opc.tcp://127.0.0.1:{ports[name]}", security)
        try:
            spaces = set(await c.get_namespace_array())
            return await _namespace_tags(c, f"urn:pilot-line:plc:{name}"), spaces
        finally:
            await c.disconnect()

    try:
        for name, port in ports.items():
            _wait_listening(procs[name], port)
        dist, spaces = asyncio.run(tags_of("distillation"))
        assert dist == {"DIST.TEMP", "DIST.PHASE", "DIST.RESIDUAL"}
        assert {s for s in spaces if s.startswith("urn:pilot-line:plc")} == {"urn:pilot-line:plc:distillation"}
        with pytest.raises(Exception, match="BadSecurityModeRejected|offers|None"):
            asyncio.run(connect_client(f"opc.tcp://127.0.0.1:{ports['distillation']}",
                                       ClientSecurity("None", "None", pki, allow_plaintext_password=True)))
        _stop(procs["distillation"])  # kill -9: that PLC only
        assert procs["distillation"].returncode == -signal.SIGKILL
        sx, _ = asyncio.run(tags_of("extraction"))
        assert sx == {t.name for t in config.plc_tags()["extraction"]}
    finally:
        for p in procs.values():
            _stop(p)


def test_bare_endpoint_serves_every_tag_on_one_server(config, tmp_path):
    port = free_port()
    proc = _plc_sim(["--endpoint", f"opc.tcp://127.0.0.1:{port}"], tmp_path / "pki")

    async def main():
        c = await connect_client(f"opc.tcp://127.0.0.1:{port}",
                                 ClientSecurity(pki=Pki(tmp_path / "pki"), username="op", password=OP_PW))
        try:
            return await _namespace_tags(c, config.opcua.namespace_uri)
        finally:
            await c.disconnect()

    try:
        _wait_listening(proc, port)
        assert asyncio.run(main()) == {t.name for t in config.tags}
    finally:
        _stop(proc, signal.SIGTERM)


def test_plc_sim_refuses_bad_plc_options_in_one_line(tmp_path):
    port = free_port()
    for argv, text in ((["--plc", "vacuum"], "unknown PLC vacuum: the PLCs of pilot-line-new-extractant are"),
                       (["--endpoint", f"ghost=opc.tcp://127.0.0.1:{port}"], "unknown PLC ghost"),
                       (["--plc", "extraction", "--plc", "distillation", "--endpoint", f"opc.tcp://127.0.0.1:{port}"],
                        "give NAME=URL"),
                       (["--endpoint", f"adsorption=opc.tcp://127.0.0.1:{port}",
                         "--endpoint", f"extraction=opc.tcp://127.0.0.1:{port}"], "would both listen"),
                       (["--endpoint", "adsorption=http://127.0.0.1:1"], "bad endpoint")):
        r = CliRunner().invoke(app, ["plc-sim", *argv], env={"COLUMNS": "200", "PILOT_OPCUA_USERS": USERS})
        assert r.exit_code == 2, (argv, r.output)
        assert text in r.output and "Traceback" not in r.output, (argv, r.output)


def test_deploy_serves_and_reaches_the_four_plcs(config):
    """Compose: one plc-sim service serving every PLC of the shipped line on its port, published on
    the host, and the bridge given each PLC's endpoint; systemd: the config's endpoints as they are."""
    deploy = Path(__file__).parents[1] / "deploy"
    services = yaml.safe_load((deploy / "compose.yaml").read_text())["services"]
    cmd = services["plc-sim"]["command"]
    served = dict(cmd[i + 1].split("=", 1) for i, a in enumerate(cmd) if a == "--endpoint")
    ports = {p.name: p.endpoint.rsplit(":", 1)[1] for p in config.opcua.resolved_plcs()}
    assert served == {name: f"opc.tcp://0.0.0.0:{port}" for name, port in ports.items()}
    assert services["plc-sim"]["ports"] == ["127.0.0.1:${PILOT_OPCUA_PORTS:-4840-4843}:4840-4843"]
    env = services["bridge"]["environment"]["PILOT_OPCUA_ENDPOINTS"]
    default = re.fullmatch(r"\$\{PILOT_OPCUA_ENDPOINTS:-(.*)\}", env)[1]
    assert parse_plcs(default.split(",")) == {name: f"opc.tcp://plc-sim:{port}" for name, port in ports.items()}
    assert "PILOT_OPCUA_ENDPOINT" not in services["bridge"]["environment"]
    unit = (deploy / "systemd/pilot-plc-sim.service").read_text()
    (start,) = re.findall(r"^ExecStart=(.*)$", unit, re.M)
    assert "plc-sim" in start and "--endpoint" not in start and "--plc" not in start
    bridge = (deploy / "systemd/pilot-bridge.service").read_text()
    operator = re.search(r"^Environment=PILOT_OPERATOR_ENDPOINT=opc\.tcp://127\.0\.0\.1:(\d+)$", bridge, re.M)
    assert operator and operator[1] not in ports.values()  # the operator server is not on a PLC's port
    assert "PILOT_OPCUA_ENDPOINTS=" in (deploy / "env.example").read_text()
