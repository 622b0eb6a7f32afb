"""A served session refreshes what a trainee sees at least once per plant second.

``PilotLineConfig.served()`` synchronises the twin (and ticks the training session) every
``simulation.serve_step_s`` (1 s). An asyncua client subscribes to continuous tags with a 100 ms
sampling interval and a queue deep enough to keep every change, on a served training session
(``pilot train serve``) and on ``pilot plc-sim --step serve``, at 20x: each notification carries the
plant time of its scan as SourceTimestamp, so the gaps between them are plant seconds. Analysers
keep their own period, writes land at the next step, and ``pilot simulate`` is what it was: its
KPIs do not depend on the served step.
"""

from __future__ import annotations

import asyncio
import math

import pytest
from asyncua import Client, ua

from opcua_server.instructor import serve_training
from opcua_server.node_interop import free_port
from opcua_server.plc_sim import run_plc_sim
from opcua_server.server import chunk_steps
from opcua_server.server_security import ServerSecurity
from pilot.app import simulate
from pilot.training.session import TrainingSession
from pilot_config import load_config
from twin.plant import TwinPlant

SPEED = 20.0
TAGS = ("CELL1.TEMP", "SX.ORG.FLOW", "ADS.FEED.FLOW")  # continuous physics and noisy sensors
WANTED = 40  # notifications per tag


@pytest.fixture(scope="module")
def line():
    return load_config(None)


class Collector:
    """Every data change of the subscribed nodes: (value, SourceTimestamp in s) per tag."""

    def __init__(self, names: dict, wanted: int):
        self.names, self.wanted = names, wanted
        self.seen: dict[str, list[tuple[float, float]]] = {n: [] for n in names.values()}
        self.done = asyncio.Event()

    def datachange_notification(self, node, val, data):
        dv = data.monitored_item.Value
        self.seen[self.names[node.nodeid]].append((float(val), dv.SourceTimestamp.timestamp()))
        if all(len(v) >= self.wanted for v in self.seen.values()):
            self.done.set()


async def watch(endpoint: str, namespace_uri: str, wanted: int = WANTED) -> dict[str, list[tuple[float, float]]]:
    """Subscribe to ``TAGS`` (100 ms sampling and publishing) until each has ``wanted`` changes."""
    async with Client(endpoint, timeout=10) as client:
        ns = await client.get_namespace_index(namespace_uri)
        nodes = {ua.NodeId(name, ns): name for name in TAGS}
        handler = Collector(nodes, wanted + 1)  # the first one is the value at subscription
        sub = await client.create_subscription(100, handler)
        await sub.subscribe_data_change([client.get_node(n) for n in nodes], queuesize=100,
                                        sampling_interval=100)
        await asyncio.wait_for(handler.done.wait(), 120)  # a hang guard, not a timed assert
        await sub.delete()
    return {name: samples[1:] for name, samples in handler.seen.items()}


def assert_every_plant_second(seen: dict[str, list[tuple[float, float]]], step_s: float = 1.0) -> None:
    for name, samples in seen.items():
        stamps = [t for _, t in samples]
        gaps = [b - a for a, b in zip(stamps, stamps[1:])]
        assert all(g > 0 for g in gaps), f"{name}: source timestamps must advance ({gaps})"
        assert max(gaps) <= step_s + 1e-3, f"{name}: a gap of {max(gaps):.3f} plant s between scans"
        span = stamps[-1] - stamps[0]
        changes = sum(1 for (a, _), (b, _) in zip(samples, samples[1:]) if a != b)
        assert changes >= span / step_s - 1, f"{name}: {changes} value changes in {span:.0f} plant s"


def test_served_training_session_refreshes_every_plant_second(line):
    session = TrainingSession(line.served(), session_id="train-rate", seed=0)
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}"

    async def scenario():
        stop, started = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(serve_training(session, endpoint, speed=SPEED, stop=stop, started=started,
                                                  security=ServerSecurity()))
        await asyncio.wait_for(started.wait(), 60)
        try:
            return await watch(endpoint, line.opcua.namespace_uri)
        finally:
            stop.set()
            await task

    seen = asyncio.run(scenario())
    assert session.tc.tick_s == 1.0 and session.plant.dt == 1.0
    assert_every_plant_second(seen)
    temps = [v for v, _ in seen["CELL1.TEMP"]]
    assert 500 < min(temps) <= max(temps) < 600


def test_unserved_session_publishes_once_per_sync_step(line):
    """The reference: the same session on the 60 s synchronisation step publishes once per plant
    minute, so the assertion above fails for it."""
    session = TrainingSession(line, session_id="train-coarse", seed=0)
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}"

    async def scenario():
        stop, started = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(serve_training(session, endpoint, speed=600.0, stop=stop, started=started,
                                                  security=ServerSecurity()))
        await asyncio.wait_for(started.wait(), 60)
        try:
            return await watch(endpoint, line.opcua.namespace_uri, wanted=4)
        finally:
            stop.set()
            await task

    seen = asyncio.run(scenario())
    gaps = {b - a for _, samples in seen.items() for (_, a), (_, b) in zip(samples, samples[1:])}
    assert min(gaps) >= 60 - 1e-3 and {round(g) % 60 for g in gaps} == {0}  # whole sync steps
    with pytest.raises(AssertionError, match="plant s between scans"):
        assert_every_plant_second(seen)


def test_plc_sim_on_the_serve_step_refreshes_every_plant_second(line):
    """``pilot plc-sim --step serve``: every tag on one server, the twin on the 1 s step."""
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}"
    served = line.served()

    async def scenario():
        stop, started = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(run_plc_sim(served, endpoint, SPEED, seed=0, security=ServerSecurity(),
                                               stop=stop, started=started))
        await asyncio.wait_for(started.wait(), 60)
        try:
            return await watch(endpoint, served.opcua.namespace_uri)
        finally:
            stop.set()
            await task

    assert_every_plant_second(asyncio.run(scenario()))


def test_chunks_never_skip_a_plant_second():
    """Catching up, the server publishes after at most one plant second of a short step."""
    assert chunk_steps(1.0, 5) == 1 and chunk_steps(0.25, 5) == 4 and chunk_steps(0.1, 5) == 5
    assert chunk_steps(60.0, 5) == 5  # the coarse step keeps its catch-up chunks


def test_analysers_keep_their_period_and_writes_land_at_the_next_step(line):
    plant = TwinPlant(line.served(), seed=0)
    analyser = "ADS.COL1.OUT.Dy"
    period, delay = line.tag(analyser).period_s, line.tag(analyser).delay_s
    stamps = set()
    for _ in range(int(2 * period + delay) + 1):
        plant.advance(1.0)
        s = plant.snapshot().get(analyser)
        if s is not None:
            stamps.add(s.source_time)
    assert len(stamps) >= 3
    ordered = sorted(stamps)
    assert all(math.isclose(b - a, period) for a, b in zip(ordered, ordered[1:]))  # its own period
    # a setpoint write: the scan shows it after the next 1 s step, not a plant minute later
    target = 0.8 * line.tag("SX.ORG.FLOW_SP").high
    before = plant.snapshot()["SX.ORG.FLOW"].value
    assert abs(before - target) > 5
    assert plant.write({"SX.ORG.FLOW_SP": target}).accepted == ("SX.ORG.FLOW_SP",)
    assert plant.snapshot()["SX.ORG.FLOW"].value == before  # held until the step
    t_write = plant.t
    plant.advance(1.0)
    after = plant.snapshot()["SX.ORG.FLOW"]
    assert after.source_time == t_write + 1.0 and abs(after.value - target) < 2.0

def test_pilot_simulate_does_not_depend_on_the_served_step(line, tmp_path):
    """``pilot simulate`` keeps its 60 s step: its KPIs are those of a run whose config has the
    previous settings (no serve step at all) and of one with another serve step."""
    other = line.model_copy(update={"simulation": line.simulation.model_copy(update={"serve_step_s": 7.0})})
    runs = [simulate(c, 2 * 3600.0, tmp_path / name, seed=0, make_plots=False).summary
            for name, c in (("default", line), ("other", other))]
    assert TwinPlant(line).dt == line.simulation.sync_step_s == 60.0
    assert runs[0]["kpis"] == runs[1]["kpis"] and runs[0]["final"] == runs[1]["final"]
