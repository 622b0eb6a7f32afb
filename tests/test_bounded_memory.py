"""What keeps a long-running process's memory flat: tick latencies in a fixed-size histogram,
the plant stepped on one thread of its server, the cell estimator's prediction on a pure-Python
integrator that matches a tight reference."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
from scipy.integrate import solve_ivp

from controllers.estimation_cell import CellModel
from opcua_server.server import PlcServer
from pilot.closed_loop import LatencyHistogram
from pilot_config import load_config
from twin import electrolysis as elec


def test_latency_quantiles_match_the_order_statistics_in_constant_memory():
    rng = np.random.default_rng(7)
    lat = rng.lognormal(np.log(0.05), 1.0, 100_000)  # median 50 ms, a long tail
    hist = LatencyHistogram()
    size = hist.counts.nbytes
    for x in lat:
        hist.add(x)
    assert hist.counts.nbytes == size and hist.n == lat.size
    width = 10.0 ** (1.0 / (2 * LatencyHistogram.BINS_PER_DECADE))  # half a bin, as a factor
    for q in (0.5, 0.9, 0.99):
        exact = np.quantile(lat, q, method="inverted_cdf")  # the ⌈q·n⌉-th smallest value
        assert exact / width <= hist.quantile(q) <= exact * width, q
    s = hist.summary_ms()
    assert s["max"] == pytest.approx(1e3 * lat.max()) and s["p99"] >= s["p50"]
    assert LatencyHistogram().summary_ms() == {"p50": 0.0, "p99": 0.0, "max": 0.0}


def test_a_value_outside_the_range_lands_in_an_end_bin_and_the_quantile_stays_in_min_max():
    hist = LatencyHistogram()
    for x in (1e-9, 2e-9, 5e4):
        hist.add(x)
    assert hist.counts[0] == 2 and hist.counts[-1] == 1
    assert hist.quantile(0.0) == pytest.approx(1e-9) and hist.quantile(1.0) == pytest.approx(5e4)


class _Plant:
    t, dt = 0.0, 1.0

    def __init__(self):
        self.threads: list[threading.Thread] = []

    def advance(self, dt_s: float) -> None:
        self.threads.append(threading.current_thread())
        self.t += dt_s


def test_the_server_steps_its_plant_on_one_thread_of_its_own_until_it_stops():
    plant = _Plant()
    server = PlcServer([], "urn:test:stepper", plant, "opc.tcp://127.0.0.1:1")

    async def main():
        for _ in range(40):  # other work in asyncio's default pool between the steps
            await asyncio.gather(server.on_stepper(plant.advance, 1.0), asyncio.to_thread(sum, range(100)))
        await server.stop()

    asyncio.run(main())
    assert plant.t == 40.0
    stepping = set(plant.threads)
    assert len(stepping) == 1 and threading.main_thread() not in stepping
    (thread,) = stepping
    assert thread.name.startswith("plant-step") and not thread.is_alive()  # ended by stop()


@pytest.fixture(scope="module")
def cell():
    c = load_config(None).electrolysis.cells[0]
    return CellModel(c.name, elec.params_from_config(c))


@pytest.mark.parametrize("current_factor", [1.0, 1.6])  # design current; high enough for an anode effect
def test_the_cell_prediction_is_within_its_tolerance_of_a_tight_reference(cell, current_factor):
    z, _ = cell.initial()
    u = np.array([150.0 * current_factor, 2.6e3, 4.4e-4, cell.p.t_amb])  # A, W, mol Tb/s, K
    for _ in range(30):  # 30 ticks of 60 s, each from the last prediction
        z_next, phi = cell.predict(z, u, 60.0)
        ref = solve_ivp(lambda t, zz: cell.rates(zz, u), (0.0, 60.0), z, method="Radau",
                        rtol=1e-11, atol=1e-14).y[:, -1]
        assert np.all(np.abs(z_next - ref) <= 1e-9 + 1e-6 * np.abs(ref)), (z, z_next, ref)
        assert phi.shape == (5, 5) and np.all(np.isfinite(phi))
        z = z_next
