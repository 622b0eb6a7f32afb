"""The carousel's slow work (capacity fits, breakthrough forecasts) off the control thread.

The refit is replaced by a test double that announces it has started and then waits on a latch
the test releases: the tick that submitted it must have returned while the latch is still
closed (no timing), and the double's capacity must appear at a later tick, stamped with the time
its data are from. The fit's state correction lands through the catch-up of the ticks in between
(``next_tick`` against ``inline``: the same state; ``worker`` after three ticks: the same state
within the shadow's integration tolerance).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from threadpoolctl import threadpool_info

import controllers.estimation_carousel as ec
from controllers.carousel_refit import FitResult
from controllers.estimation_carousel import CarouselEstimator
from controllers.loop import ControlLoop, every_loop
from pilot_config import default_config_path, load_config
from twin.plant import TwinPlant

TICK = 60.0
COLUMN = 1  # col2: the lag of the design start, a loading column with a segment
LATCH_S = 120.0  # the double gives up after this (a broken implementation fails, not hangs)


@pytest.fixture(scope="module")
def config():
    return load_config(default_config_path())


@pytest.fixture(scope="module")
def scans(config):
    """(t, snapshot) of the twin every TICK, recorded once for every test here."""
    plant, out = TwinPlant(config), []
    for _ in range(9):
        plant.advance(TICK)
        out.append((plant.t, plant.snapshot()))
    return out


class LatchedRefit:
    """A refit double: sets ``started``, waits for ``release``, returns capacity ``theta`` and a
    clean column (a state change the catch-up must carry)."""

    def __init__(self, theta: float = 0.5, wait: bool = True):
        self.theta, self.wait = theta, wait
        self.started, self.release, self.finished = threading.Event(), threading.Event(), threading.Event()
        self.timed_out = False
        self.calls: list[float] = []

    def __call__(self, ctx, job):
        self.calls.append(job.t)
        self.started.set()
        if self.wait:
            self.timed_out = not self.release.wait(LATCH_S)
        n = ctx.cfg.n_cells
        liquid = np.zeros((n, 3))
        liquid[:, 2] = ctx.h_feed
        state = (liquid, np.zeros((n, 2)))
        self.finished.set()
        return FitResult(job.column, job.t, self.theta, 0.01, state, None, None, len(job.samples), 0.0)


def _due(est: CarouselEstimator, column: int = COLUMN) -> None:
    """Make a fit of ``column`` due at the next tick (as an informative sample would)."""
    est._pending.add(column)


def _blas_threads() -> list[int]:
    return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]


def test_a_due_refit_does_not_hold_the_tick_lands_later_and_close_joins_the_worker(config, scans, monkeypatch):
    refit = LatchedRefit()
    monkeypatch.setattr(ec, "refit", refit)
    before = _blas_threads()
    loop = ControlLoop(config, modes=every_loop(config, "advisory"), slow_work="worker", mpc_deadline_s=None)
    assert set(_blas_threads()) == {1}
    est = next(u for u in loop.units if u.name == "carousel").ekf
    try:
        for t, snap in scans[:3]:
            loop.step(snap, t)
        _due(est)
        tick = loop.step(*scans[3][::-1])
        t_submit = tick.estimates["carousel"].t
        assert refit.started.wait(LATCH_S)  # the worker is inside the refit ...
        assert not refit.finished.is_set() and not refit.release.is_set()  # ... and the tick has returned
        assert tick.estimates["carousel"].x[f"col{COLUMN + 1}.capacity"] == 1.0  # the prior, carried
        assert np.isnan(tick.estimates["carousel"].derived[f"col{COLUMN + 1}.capacity_from_s"])
        while_running = loop.step(*scans[4][::-1])  # still running: the tick goes on without it
        assert not refit.finished.is_set()
        assert while_running.estimates["carousel"].x[f"col{COLUMN + 1}.capacity"] == 1.0
        refit.release.set()
        next(j for j in est.jobs.jobs if j.kind == "fit").future.result(LATCH_S)
        later = loop.step(*scans[5][::-1]).estimates["carousel"]
        assert not refit.timed_out and refit.calls == [t_submit]
        assert later.x[f"col{COLUMN + 1}.capacity"] == refit.theta
        assert later.derived[f"col{COLUMN + 1}.capacity_from_s"] == t_submit  # the time the fit is from
        assert est.fit_log[-1]["t"] == t_submit and est.fit_log[-1]["applied"] == later.t > t_submit
        assert later.published[f"ADS.COL{COLUMN + 1}.CAPACITY.EST"] == refit.theta

        # close() while a fit is running: it cancels what has not started and joins the running one
        second = LatchedRefit(theta=0.7)
        monkeypatch.setattr(ec, "refit", second)
        _due(est, 2)
        loop.step(*scans[6][::-1])
        assert second.started.wait(LATCH_S)
        closing = threading.Event()
        cancel = est.cancel
        monkeypatch.setattr(est, "cancel", lambda: (closing.set(), cancel()))
        releaser = threading.Thread(target=lambda: closing.wait(LATCH_S) and second.release.set())
        releaser.start()
    finally:
        refit.release.set()
        loop.close()
    releaser.join(LATCH_S)
    assert second.finished.is_set() and not second.timed_out  # joined: it ran to its end before close returned
    assert not est.jobs.jobs and loop._executor is None
    assert not [t for t in threading.enumerate() if t.name.startswith("carousel-estimator")]
    assert _blas_threads() == before
    loop.close()  # idempotent


def _run(config, scans, apply: str, hold_ticks: int = 0):
    """An estimator stepped on the recorded scans; a fit of COLUMN due at tick 3 (released
    ``hold_ticks`` ticks later); returns (estimator, estimates)."""
    refit = LatchedRefit(wait=hold_ticks > 0)
    pool = None if apply == "inline" else ThreadPoolExecutor(1)
    est = CarouselEstimator(config, executor=pool, apply=apply)
    out = []
    orig, ec.refit = ec.refit, refit
    try:
        for i, (t, snap) in enumerate(scans):
            if i == 3:
                _due(est)
            if hold_ticks and i == 3 + hold_ticks:
                refit.release.set()
                next(j for j in est.jobs.jobs if j.kind == "fit").future.result(LATCH_S)
            out.append(est.step(snap, {}, t))
    finally:
        ec.refit = orig
        refit.release.set()
        if pool is not None:
            pool.shutdown(wait=True)
    return est, out


def test_next_tick_gives_the_inline_state_one_tick_later_and_worker_catches_up(config, scans):
    inline, a = _run(config, scans, "inline")
    nxt, b = _run(config, scans, "next_tick")
    late, c = _run(config, scans, "worker", hold_ticks=3)
    k = f"col{COLUMN + 1}.capacity"
    assert a[3].x[k] == 0.5 and b[3].x[k] == 1.0 and b[4].x[k] == 0.5  # landed one tick later
    assert [e.x[k] for e in c[3:7]] == [1.0, 1.0, 1.0, 0.5]  # three ticks later
    assert inline.fit_log[0]["t"] == nxt.fit_log[0]["t"] == late.fit_log[0]["t"] == a[3].t
    # the same shadow once the fit has landed: the state at the fit's time, re-advanced
    np.testing.assert_array_equal(nxt.x, inline.x)
    assert np.abs(late.x - inline.x).max() < 1e-3 * np.abs(inline.x).max()
    assert inline.model.split(inline.x)[1][COLUMN].sum() > 0  # the cleaned column has loaded since
    # forecasts: inline in the tick, next_tick one tick later, stamped with the time of their data
    assert a[0].derived["forecast_from_s"] == a[0].t
    assert np.isnan(b[0].derived["forecast_from_s"]) and "ADS.LAG.TIME_TO_BT.EST" not in b[0].published
    assert b[1].derived["forecast_from_s"] == b[0].t
    assert b[1].published["ADS.LAG.TIME_TO_BT.EST"] == pytest.approx(
        a[1].published["ADS.LAG.TIME_TO_BT.EST"], rel=1e-9)  # the same forecast, one tick later


def test_the_slow_work_runs_in_a_worker_process(config, scans):
    with ControlLoop(config, slow_work="next_tick", worker="process") as loop:
        ticks = [loop.step(snap, t) for t, snap in scans[:3]]
        est = next(u for u in loop.units if u.name == "carousel").ekf
    tick = ticks[-1]
    # the decision (in the loop's thread beside the process): the first in its own tick, then each
    # tick the one solved from the previous tick's estimate
    decisions = [tk.mpc["carousel"] for tk in ticks]
    t_est = [tk.estimates["carousel"].t for tk in ticks]
    assert not any(d.held for d in decisions)
    assert [d.t for d in decisions] == [t_est[0], t_est[0], t_est[1]]
    second = decisions[1]
    assert ticks[1].proposals["ADS.FEED.FLOW_SP"] == second.mv["ADS.FEED.FLOW_SP"]
    inline = CarouselEstimator(config)
    for t, snap in scans[:3]:
        ref = inline.step(snap, {}, t)
    assert est.forecast_log and est.forecast_log[0]["t"] == 0.0  # made in the process from the first tick
    assert tick.published["ADS.LAG.TIME_TO_BT.EST"] == pytest.approx(ref.published["ADS.LAG.TIME_TO_BT.EST"],
                                                                    rel=0.02)
