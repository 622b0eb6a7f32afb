"""Carousel estimator and decision on the real TwinPlant with fouled adsorbent
(``twin.malfunctions`` ``adsorbent_fouling``: col2 capacity × 0.2 from the start, col3 × 0.5 from the
start, col1 × 0.5 from 2.5 h while it is off line), feed 350 L/h (the guard's upper limit).

Sequence: col2 (lag of the design start) breaks through after ~1.5 h while col3 stands by: a safe
switch that teaches the estimator col2's capacity. col3 and col1 (half capacity, ~4.2 h stints)
follow. At the third switch col2 is lag again while col3 has only just gone off line (3.3 h to
regenerate): at 350 L/h col2 breaks through after ~1.5 h, the PLC cannot switch, and the lag
outlet runs past the limit (open loop). Closed loop: the decision cuts the feed for that stint.
The open loop is a fork of the closed-loop plant at the third switch (identical history: the
decision held 350 L/h until then, asserted), so the two differ only by the decision.
"""

import dataclasses

import numpy as np
import pytest

from controllers.estimation_carousel import CarouselEstimator
from controllers.mpc_carousel import CarouselMpc, CarouselMpcConfig
from pilot_config import default_config_path, load_config
from twin.adsorption import ROLE_STANDBY, ROLE_WASH
from twin.malfunctions import Malfunction, inject
from twin.plant import TwinPlant
from twin.sequences import _offline
from twin.signals import Quality, Sample

HOUR = 3600.0
TICK = 60.0
FOULED = 0.2  # capacity factor of col2
FEED = 350.0  # L/h: the guard's upper limit, shortens the cycle (~8.4 h per healthy column)


@pytest.fixture(scope="module")
def config():
    return load_config(default_config_path())


def _fouled_plant(config) -> TwinPlant:
    plant = TwinPlant(config)
    for col, severity, onset in (("col2", 1 - FOULED, 0.0), ("col3", 0.5, 0.0), ("col1", 0.5, 2.5 * HOUR)):
        inject(plant, Malfunction(kind="adsorbent_fouling", target=col, severity=severity, onset_s=onset))
    plant.write({"ADS.FEED.FLOW_SP": FEED})
    return plant


def test_bad_samples_are_dropped_and_delayed_samples_meet_the_prediction_at_their_sample_time(config):
    plant = TwinPlant(config)
    est = CarouselEstimator(config)
    for _ in range(30):
        plant.advance(TICK)
        est.step(plant.snapshot(), {}, plant.t)
    ts = plant.t - 2 * TICK  # a delayed sample, newer than the last one seen (analyser delay 300 s)
    assert ts > est._seen["ADS.COL1.OUT.Dy"]
    old = est._predicted_at(ts)
    plant.advance(TICK)
    snap = dict(plant.snapshot())
    snap["ADS.COL1.OUT.Dy"] = Sample(55.0, ts, Quality.GOOD)
    snap["ADS.COL1.OUT.Tb"] = Sample(99.0, ts, Quality.BAD)
    res = est.step(snap, {}, plant.t)
    assert res.dropped["ADS.COL1.OUT.Tb"] == "bad quality"
    assert "ADS.COL1.OUT.Tb" not in res.used
    # the innovation is taken against the shadow's outlet at the sample time, not now
    assert res.innovations["ADS.COL1.OUT.Dy"] == pytest.approx(55.0 - old[0, 0], abs=1e-9)
    assert set(res.published) >= {"ADS.COL1.LOADING.EST", "ADS.COL3.CAPACITY.EST", "ADS.LAG.TIME_TO_BT.EST"}
    # design start: lead saturated (~96 % of the sites), lag loading, standby clean
    truth = plant.flowsheet.blocks["adsorption"]
    for k in (1, 2, 3):
        true = 100 * truth.y[truth.output_index[f"col{k}.loading_fraction"]]
        assert res.published[f"ADS.COL{k}.LOADING.EST"] == pytest.approx(true, abs=1.0)


def test_mpc_holds_on_a_deadline_miss_and_without_an_estimate(config):
    plant = _fouled_plant(config)
    est = CarouselEstimator(config)
    mpc = CarouselMpc(config, CarouselMpcConfig(feed_target_L_per_h=FEED))
    plant.advance(TICK)
    res = est.step(plant.snapshot(), {}, plant.t)
    # pretend the standby column is being regenerated: the decision must forecast
    shadow = dataclasses.replace(res.shadow, ready_in_s=(np.inf, np.inf, 3 * HOUR))
    held = mpc.step(dataclasses.replace(res, shadow=shadow), plant.snapshot(), plant.t, deadline_s=1e-6)
    assert held.held and "deadline" in held.held_reason
    assert held.mv == {"ADS.FEED.FLOW_SP": pytest.approx(FEED), "ADS.BT_LIMIT_SP": pytest.approx(5.0)}
    none = mpc.step(dataclasses.replace(res, shadow=None), plant.snapshot(), plant.t)
    assert none.held and "estimate" in none.held_reason
    ok = mpc.step(dataclasses.replace(res, shadow=shadow), plant.snapshot(), plant.t, deadline_s=30.0)
    assert not ok.held and ok.mv["ADS.FEED.FLOW_SP"] == pytest.approx(FEED)  # healthy lag: no cut


def _fork(plant: TwinPlant, config) -> TwinPlant:
    """A new TwinPlant in the state of ``plant`` (clock restarts at 0, time stamps continue);
    the column that has just gone off line restarts its offline sequence."""
    new = TwinPlant(config, epoch_s=plant.t)
    for name, b in plant.flowsheet.blocks.items():
        nb = new.flowsheet.blocks[name]
        nb.x, nb.u, nb.p = b.x.copy(), b.u.copy(), b.p
        nb.refresh(0.0)
    roles = _roles(plant)
    new.env.process(_offline(new, roles.index(ROLE_WASH) + 1, config.adsorption))
    return new


def _roles(plant: TwinPlant) -> list[int]:
    blk = plant.flowsheet.blocks["adsorption"]
    return [round(blk.u[blk.input_index[f"role_{k}"]]) for k in (1, 2, 3)]


def _loop(plant, est, mpc, t0: float, until) -> np.ndarray:
    """Run ticks until ``until(plant, t)``; rows (t, true lag C/C0, TIME_TO_BT.EST, feed proposed)."""
    blk = plant.flowsheet.blocks["adsorption"]
    i_bt = blk.output_index["lag_breakthrough"]
    rec, applied = [], {}
    while True:
        plant.advance(TICK)
        t = t0 + plant.t
        snap = plant.snapshot()
        e = est.step(snap, applied, t)
        flow = FEED
        if mpc is not None:
            res = mpc.step(e, snap, t, deadline_s=60.0)  # the decision's clock is not under test here
            plant.write(res.mv)
            applied, flow = dict(res.mv), res.mv["ADS.FEED.FLOW_SP"]
        rec.append((t, float(blk.y[i_bt]), e.published.get("ADS.LAG.TIME_TO_BT.EST", float("nan")), flow))
        if until(plant, t):
            return np.array(rec)


@pytest.mark.slow
def test_fouled_columns_are_estimated_and_the_lag_breakthrough_kept_under_the_limit(config):
    limit = config.adsorption.breakthrough_limit_fraction
    plant = _fouled_plant(config)
    est = CarouselEstimator(config)
    mpc = CarouselMpc(config, CarouselMpcConfig(feed_target_L_per_h=FEED))

    def switches(p):
        return [ev.t for ev in p.events if "carousel switch" in ev.text]

    before = _loop(plant, est, mpc, 0.0, lambda p, t: len(switches(p)) == 3)
    t_branch = plant.t
    assert np.all(before[:-1, 3] == FEED)  # open and closed loop are the same run up to here
    cap = {k: est.step(plant.snapshot(), {}, t_branch).x[f"col{k}.capacity"] for k in (1, 2, 3)}
    # capacities from each column's first breakthrough: within 4 % of the truth (col1's, whose
    # breakthrough is this switch, comes with the next analyser samples: checked at the end)
    assert cap[2] == pytest.approx(0.2, rel=0.04) and cap[3] == pytest.approx(0.5, rel=0.04)

    open_plant, open_est = _fork(plant, config), est.fork()
    open_plant.write({"ADS.FEED.FLOW_SP": FEED})  # (the decision may have cut it on this tick)
    closed = _loop(plant, est, mpc, 0.0, lambda p, t: _roles(p)[2] == ROLE_STANDBY or t > 14.0 * HOUR)
    opened = _loop(open_plant, open_est, None, t_branch,
                   lambda p, t: t > t_branch + 1.5 * HOUR and p.flowsheet.blocks["adsorption"].y[
                       p.flowsheet.blocks["adsorption"].output_index["lag_breakthrough"]] > 2 * limit)
    # closed loop: the feed is cut for col2's stint and its breakthrough stays under the limit
    # until col3 is regenerated
    assert closed[:, 3].min() < 0.6 * FEED
    assert closed[:, 1].max() < limit
    assert len(switches(plant)) == 3
    # open loop: the same stint runs past the limit with no column to switch to
    crossed = opened[opened[:, 1] >= limit, 0]
    assert crossed.size and not switches(open_plant)  # (the fork logs only its own events)
    t_cross = crossed[0]
    # time to breakthrough predicted 30 min into the stint (capacity known from the first one)
    k = int(np.searchsorted(opened[:, 0], t_branch + 1800.0))
    predicted = opened[k, 0] + opened[k, 2]
    assert abs(predicted - t_cross) < 0.2 * (t_cross - opened[k, 0]), (predicted - t_cross) / 60
    # loading estimates of lead and lag against the twin at the end of the closed loop (the lag's
    # is low by ~4 points: it missed the inflow of the ticks between the switch and the fit of
    # the new lead, whose breakthrough that switch was; see docs/estimation_mpc.md)
    final = est.step(plant.snapshot(), {}, plant.t)
    assert final.x["col1.capacity"] == pytest.approx(0.5, rel=0.04)
    blk = plant.flowsheet.blocks["adsorption"]
    true = {c: 100 * blk.y[blk.output_index[f"col{c}.loading_fraction"]] for c in (1, 2)}
    for c in (1, 2):
        assert final.published[f"ADS.COL{c}.LOADING.EST"] == pytest.approx(true[c], abs=5.0)
    print(f"\ncarousel: capacities {cap} / col1 {final.x['col1.capacity']:.3f}; switch 3 at {t_branch / HOUR:.2f} h;"
          f" ttb predicted {predicted / HOUR:.2f} h vs {t_cross / HOUR:.2f} h; closed feed "
          f"{closed[:, 3].min():.0f}-{closed[closed[:, 3] < FEED, 3].max():.0f} L/h, lag C/C0 max "
          f"{100 * closed[:, 1].max():.2f} % until {closed[-1, 0] / HOUR:.2f} h; open C/C0 max "
          f"{100 * opened[:, 1].max():.1f} % at {opened[-1, 0] / HOUR:.2f} h; loading est "
          f"{[round(final.published[f'ADS.COL{c}.LOADING.EST'], 1) for c in (1, 2)]} vs "
          f"{[round(true[c], 1) for c in (1, 2)]}; fits {[(f['column'], round(f['capacity'], 3), round(f['seconds'], 2)) for f in est.fit_log]}")
