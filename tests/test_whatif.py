"""What-if from the live estimate: `pilot run`'s loop (``run_live``) against a simulated PLC, an
extractant loss injected before; an engineer asks `pilot whatif` at 1 plant-hour; the base case is
checked against what the plant then really does over the next plant-hour, the proposed change
against the MPC's linearisation, and an operator-role user is refused."""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from asyncua import ua
from typer.testing import CliRunner

from controllers.loop import ControlLoop
from controllers.whatif import ForkState, WhatIfCase, build_fork
from opcua_server.audit import read_journal
from opcua_server.client_security import ClientSecurity
from opcua_server.node_interop import free_port, wait_port
from opcua_server.operator import call_operator
from opcua_server.security import Pki
from opcua_server.server_security import ServerSecurity
from opcua_server.users import UserDirectory
from pilot.cli import app
from pilot.live import run_live
from pilot_config import load_config
from twin.plant import TwinPlant

ROOT = Path(__file__).resolve().parent.parent
SPEED = 40.0  # plant s per wall s
FORK_S = 3600.0  # plant time of the what-if (the fault from 300 s)
HORIZON_S = 3600.0
ENGINEER, OPERATOR = ("erin", "erin-engineer-secret"), ("olga", "olga-operator-secret")


@pytest.fixture(scope="module")
def config():
    return load_config()


def test_the_fork_takes_every_units_estimate_not_the_design_state(config):
    loop = ControlLoop(config, timing_points=False, mpc_deadline_s=None)
    plant = TwinPlant(config)
    tick = loop.step(plant.snapshot(), 0.0)
    est = {u: (dict(e.x), dict(e.cov_diag)) for u, e in tick.estimates.items()}
    est["cell1"][0].update(ce_factor=0.7, temperature=est["cell1"][0]["temperature"] + 8.0, salt_Tb=3.5)
    est["cascade"][0]["ln_kex_factor"] = math.log(0.85)
    est["cascade"][1]["tb_purity_pct"] = 0.03 ** 2
    est["carousel"][0]["col2.capacity"] = 0.6
    state = ForkState(0.0, est, {"SX.ORG.FLOW_SP": 31.0}, {"TANK.LEVEL": 40.0}, loop.modes)
    fork, fork_loop, _ = build_fork(config, state, WhatIfCase(changes={"SX.SCRUB.FLOW_SP": 4.0}), loop.modes)
    cell = fork.flowsheet.blocks["cell1"]
    assert cell.x[cell.state_index["salt_Tb"]] == 3.5
    assert cell.x[cell.state_index["temperature"]] == pytest.approx(est["cell1"][0]["temperature"])
    assert cell.p.eta_max == pytest.approx(0.7 * plant.flowsheet.blocks["cell1"].p.eta_max)
    assert fork.flowsheet.blocks["extraction"].p.kex_factor == pytest.approx(0.85)
    assert list(fork.flowsheet.blocks["adsorption"].p.capacity_factor) == [1.0, 0.6, 1.0]
    assert fork.signal("eluate_tank.level") == pytest.approx(0.40, rel=1e-6)  # a fraction inside the twin
    snap = fork.snapshot()
    assert snap["SX.ORG.FLOW_SP"].value == pytest.approx(31.0) and snap["SX.SCRUB.FLOW_SP"].value == pytest.approx(4.0)
    cascade = next(u for u in fork_loop.units if u.name == "cascade")
    assert cascade.ekf.x[0] == pytest.approx(math.log(0.85))  # the loop's estimators start from it too
    assert cascade.ekf.p[3, 3] == pytest.approx(0.03 ** 2)


def _operator_security(tmp_path) -> tuple[ServerSecurity, Pki]:
    users = UserDirectory()
    users.add(*ENGINEER, "engineer")
    users.add(*OPERATOR, "operator")
    pki = Pki(tmp_path / "pki")
    return ServerSecurity(endpoints=(("Basic256Sha256", "SignAndEncrypt"),), pki=pki, users=users), pki


PLANT = """
import asyncio, json, sys, time
from controllers.whatif import kpis
from opcua_server.plc_sim import build_servers, scan, serve_plan
from opcua_server.server_security import ServerSecurity
from pilot_config import load_config
from twin.malfunctions import Malfunction, inject
from twin.plant import TwinPlant

url, truth_path, speed = sys.argv[1], sys.argv[2], float(sys.argv[3])
config = load_config()
plant = TwinPlant(config)
inject(plant, Malfunction(kind="extractant_degradation", target="extraction", severity=0.1, onset_s=300.0))
epoch = time.time() - plant.t
out = open(truth_path, "w")
out.write(json.dumps({"epoch": epoch}) + "\\n")
out.flush()

def record():  # the plant's KPIs after every physics step, before the scan publishes them
    while True:
        yield plant.step_event
        out.write(json.dumps({"t": plant.t, "kpis": kpis(plant)}) + "\\n")
        out.flush()

async def main():
    servers, lock = build_servers(config, serve_plan(config, endpoint=url), plant, ServerSecurity(), epoch)
    for s in servers:
        await s.start()
    await scan(plant, servers, lock, speed, asyncio.Event())

plant.env.process(record())
asyncio.run(main())
"""


@pytest.fixture()
def plc(tmp_path):
    """The twin behind its simulated PLC in its own process (as `pilot plc-sim`), an extractant
    loss of 10 % from 300 s; it writes the plant's true KPIs after every step to truth.jsonl."""
    port, truth = free_port(), tmp_path / "truth.jsonl"
    proc = subprocess.Popen([sys.executable, "-c", PLANT, f"opc.tcp://127.0.0.1:{port}", str(truth), str(SPEED)],
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, 60)
        yield f"opc.tcp://127.0.0.1:{port}", truth
    finally:
        proc.terminate()
        proc.wait(10)


def _whatif_cli(endpoint: str, pki: Pki, out, user, change: str) -> tuple[int, str]:
    r = CliRunner().invoke(app, ["whatif", "--endpoint", endpoint, "--pki", str(pki.root), "--user", user[0],
                                 "--change", change, "--mode", "advisory", "--horizon", "1h", "--name",
                                 "organic +5 %", "--out", str(out)], env={"PILOT_OPCUA_PASSWORD": user[1],
                                                                          "COLUMNS": "200"})
    return r.exit_code, r.output


async def _live_with_whatif(config, plc_url: str, epoch: float, tmp_path):
    """The loop live in advisory against the PLC; at FORK_S an operator asks for a what-if (refused),
    then the engineer (`pilot whatif`, +5 % organic); runs until one horizon after the fork."""
    op_url = f"opc.tcp://127.0.0.1:{free_port()}"
    stop, at_fork, horizon_done = asyncio.Event(), asyncio.Event(), asyncio.Event()
    fork: dict = {}
    op_security, pki = _operator_security(tmp_path)

    def on_tick(tick, result):
        if tick.t - epoch >= FORK_S:
            at_fork.set()
        if "t" in fork and tick.t >= fork["t"] + HORIZON_S:
            horizon_done.set()

    live = asyncio.create_task(run_live(config, plc_url, mode="advisory", out_dir=tmp_path / "run",
                                        operator_endpoint=op_url, operator_security=op_security, stop=stop,
                                        on_tick=on_tick))
    try:
        await at_fork.wait()
        operator = ClientSecurity(pki=pki, username=OPERATOR[0], password=OPERATOR[1])
        with pytest.raises(ua.UaStatusCodeError) as refused:
            await call_operator(op_url, operator, "WhatIf", "{}")
        organic = config.extraction.organic_flow_L_per_h
        code, output = await asyncio.to_thread(_whatif_cli, op_url, pki, tmp_path / "whatif", ENGINEER,
                                               f"SX.ORG.FLOW_SP={1.05 * organic:.4f}")
        assert code == 0, output
        result = json.loads((tmp_path / "whatif" / "whatif.json").read_text())
        fork["t"] = result["t_fork"]
        await horizon_done.wait()
    finally:
        stop.set()
        await live
    return result, refused.value, output, organic


def _epoch(truth_path) -> float:
    """The plant clock's epoch (Unix s at plant time 0), the first line the PLC process writes."""
    assert truth_path.read_text().strip(), f"{truth_path} is empty after the PLC started"  # written before
    return json.loads(truth_path.read_text().splitlines()[0])["epoch"]


@pytest.mark.slow
def test_whatif_from_the_live_estimate_matches_the_plants_continuation(config, plc, tmp_path):
    url, truth_path = plc
    epoch = _epoch(truth_path)
    result, refused, output, organic = asyncio.run(_live_with_whatif(config, url, epoch, tmp_path))
    lines = [json.loads(line) for line in truth_path.read_text().splitlines()[1:]]
    truth = [(r["t"], r["kpis"]) for r in lines]
    t_fork = round((result["t_fork"] - epoch) / 60.0) * 60.0  # on the plant's 60 s grid
    assert refused.code == ua.StatusCodes.BadUserAccessDenied
    base, case = result["cases"]
    assert base["name"] == "base" and case["changes"] == {"SX.ORG.FLOW_SP": pytest.approx(1.05 * organic, abs=1e-3)}
    assert base["times_s"][-1] - base["times_s"][0] == pytest.approx(HORIZON_S)
    by_t = {round(t, 3): k for t, k in truth}
    worst = {}
    for name in result["kpis"]:  # Tb purity, Dy recovery, per cell CE and salt Tb
        for t, y, sd in zip(base["times_s"], base["kpis"][name], base["sigma"][name]):
            real = by_t[round(t_fork + t - base["times_s"][0], 3)][name]
            worst[name] = max(worst.get(name, 0.0), abs(y - real) / sd)
    assert all(w <= 3.0 for w in worst.values()), worst  # within 3σ of the estimators' forecast
    # the fault is real and the prediction follows it: purity falls over the hour, in both
    assert by_t[round(t_fork + HORIZON_S, 3)]["SX.TB_PURITY"] < by_t[round(t_fork, 3)]["SX.TB_PURITY"] - 0.3
    assert base["kpis"]["SX.TB_PURITY"][-1] < base["kpis"]["SX.TB_PURITY"][0] - 0.1
    # +5 % organic: purity moves the way the cascade MPC's linearisation says
    lin = case["linear"]["SX.TB_PURITY"]
    moved = case["kpis"]["SX.TB_PURITY"][-1] - base["kpis"]["SX.TB_PURITY"][-1]
    assert abs(lin) > 0.01 and np.sign(moved) == np.sign(lin) and abs(moved) > 0.02, (lin, moved)
    assert "SX.TB_PURITY" in output and "organic +5 %" in output  # the differences table
    journal = read_journal(tmp_path / "run" / "audit.jsonl")
    whatifs = [(e["user"], e["result"][:2]) for e in journal if e["action"] == "whatif"]
    assert ("olga", "re") in whatifs and ("erin", "ok") in whatifs
    assert (tmp_path / "whatif" / "whatif.png").stat().st_size > 10_000


async def _whatif_when_ticked(url: str, security: ClientSecurity, request: dict) -> dict:
    """Ask for a what-if as soon as the served session's loop has ticked, then its result."""
    while (answer := await call_operator(url, security, "WhatIf", json.dumps(request))).startswith(
            "error: the control loop has not ticked yet"):
        await asyncio.sleep(0.5)
    assert answer.startswith("ok: "), answer
    while (res := await call_operator(url, security, "WhatIfResult", answer[4:])) == "pending":
        await asyncio.sleep(1.0)
    assert not res.startswith("error"), res
    return json.loads(res)


@pytest.mark.slow
def test_whatif_against_a_served_training_session(tmp_path):
    from pilot.training.scenario import load_scenario
    from pilot.training.served import ServedOptions, serve_plant
    from pilot.training.session import Action, TrainingSession

    config = load_config().served()
    scenario = load_scenario("sx-organic-pump-trip")
    session = TrainingSession(config, initial=scenario.initial, seed=1)
    for m in scenario.malfunctions:
        session.submit(Action(t=0.0, kind="inject", args={"malfunction": m.model_dump()}, by="scenario"))
    op_security, pki = _operator_security(tmp_path)
    plc_url, op_url = f"opc.tcp://127.0.0.1:{free_port()}", f"opc.tcp://127.0.0.1:{free_port()}"
    opts = ServedOptions(plc_endpoint=plc_url, operator_endpoint=op_url, plc_security=ServerSecurity(),
                         operator_security=op_security, out_dir=tmp_path / "run", speed=10.0,
                         snapshot_dir=tmp_path / "snapshots")
    engineer = ClientSecurity(pki=pki, username=ENGINEER[0], password=ENGINEER[1])

    async def main():
        stop = asyncio.Event()
        served = asyncio.create_task(serve_plant(session, scenario, opts, restore=TrainingSession.restore, stop=stop))
        try:
            await asyncio.to_thread(wait_port, int(op_url.rsplit(":", 1)[1]), 300)  # the loop's operator server
            return await _whatif_when_ticked(op_url, engineer, {"horizon_s": 600.0, "mode": "auto"})
        finally:
            stop.set()
            await served

    result = asyncio.run(main())
    (base,) = result["cases"]
    assert base["modes"] and set(base["modes"].values()) == {"auto"}
    assert base["times_s"][-1] - base["times_s"][0] == pytest.approx(600.0)
    assert all(math.isfinite(v) for k in result["kpis"] for v in base["kpis"][k])
    assert base["balance_error"] < 1e-6
