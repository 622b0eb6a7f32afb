"""Scenario tests of the closed loop on the virtual clock, with the training
malfunctions (``twin.malfunctions``) as the hidden faults:

1. extractant degradation (slow drift, −10 % over 3 h) on the cascade *and* a current-efficiency
   drop on cell1 (η_max −35 %, a step), in one run: open loop (no loop; cell1's feeder at a fixed
   rate in remote, as an operator would leave it) vs the loop in auto;
2. feed Dy/Tb ratio step +30 % and −30 % into the cascade, loop in auto;
3. a fouled adsorption column (capacity −50 %, ΔP × 13): alarmed from its pressure drop.

Each asserts what the estimator sees of the hidden state, what the MPC holds, and how soon and
how quietly the anomaly is alarmed. The loop runs at a 300 s control period (the MPC's step is
600 s; the estimators take the analysers at their sample times whatever the period).
"""

from __future__ import annotations

import numpy as np
import pytest

from controllers.loop import ControlLoop
from pilot_config import load_config
from twin.malfunctions import Malfunction, inject
from twin.plant import TwinPlant

HOUR = 3600.0
PERIOD = 300.0
AUTO = {"cell1": "auto", "cell2": "auto", "cascade": "auto"}
PURITY_MIN = 99.5  # SX.TB_PURITY L limit and the cascade MPC's minimum
SALT_BAND = 0.3  # wt%, the cell MPC's band around CELL1.SALT_TB_SP


@pytest.fixture(scope="module")
def config():
    return load_config()


def run(config, faults, hours, *, closed: bool, fixed_feeder: bool = False, onset_h: float = 0.5):
    """Run the plant with ``faults``; closed: the loop in auto every PERIOD. Returns per-tick rows
    of truth and estimates, the alarm activations (t, id) and the loop (None when open)."""
    plant = TwinPlant(config)
    for f in faults:
        inject(plant, f)
    loop = ControlLoop(config, modes=AUTO, mpc_deadline_s=None, control_period_s=PERIOD,
                       carousel=False) if closed else None
    target = plant.snapshot()["CELL1.SALT_TB_SP"].value
    rows, raised = [], []
    while plant.t < hours * HOUR - 1e-9:
        plant.advance(PERIOD)
        if fixed_feeder and plant.t >= onset_h * HOUR and plant.snapshot()["CELL1.REMOTE"].value < 0.5:
            snap = plant.snapshot()
            plant.write({"CELL1.REMOTE": 1.0, "CELL1.SALT_FEED_SP": snap["CELL1.SALT_FEED"].value,
                         "CELL1.HEATER_SP": snap["CELL1.HEATER"].value})
        pub = {}
        if loop is not None:
            tick = loop.step(plant.snapshot(), plant.t)
            loop.refused(plant.write(tick.writes))
            pub = tick.published
            raised += [(plant.t, e.alarm_id) for e in tick.raised]
        rows.append({"t": plant.t, "purity": 100 * plant.signal("extraction.tb_purity"),
                     "ce": 100 * plant.signal("cell1.current_efficiency"),
                     "salt": 100 * plant.signal("cell1.salt_tb_fraction") - target,
                     "anode": plant.signal("cell1.anode_current_density") / plant.signal("cell1.critical_current_density"),
                     **pub})
    return rows, raised, loop


def col(rows, key, after_h=0.0):
    return np.array([r[key] for r in rows if r["t"] >= after_h * HOUR])


@pytest.fixture(scope="module")
def drift(config):
    faults = [Malfunction(kind="extractant_degradation", target="extraction", severity=0.1,
                          onset_s=0.5 * HOUR, ramp_s=3 * HOUR),
              Malfunction(kind="electrolyte_contamination", target="cell1", severity=0.35, onset_s=0.5 * HOUR)]
    open_ = run(config, faults, 6.0, closed=False, fixed_feeder=True)
    closed = run(config, faults, 6.0, closed=True)
    return open_, closed


@pytest.mark.slow
def test_extractant_drift_mpc_holds_purity_where_open_loop_falls_out(drift):
    (open_rows, _, _), (rows, raised, loop) = drift
    assert col(open_rows, "purity", 4.5).min() < PURITY_MIN - 0.5, col(open_rows, "purity", 4.5).min()
    assert col(rows, "purity", 0).min() > PURITY_MIN - 0.05, col(rows, "purity", 0).min()
    # the estimator follows the hidden purity between (delayed) assays
    err = np.abs(col(rows, "SX.TB_PURITY.EST", 1) - col(rows, "purity", 1))
    # the carousel switch near 5.6 h moves the cascade feed more than the estimator's feed model
    # expects: the largest error (0.21 percentage points) is there
    assert err.max() < 0.25, err.max()
    # the anomaly: SX.KEX.LO within 3 h of the onset (the true loss is then 8 %), once
    kex = [t for t, a in raised if a == "SX.KEX.LO"]
    assert kex and kex[0] <= 3.5 * HOUR and len(kex) == 1, kex
    # and told from a feed change: the feed Dy/Tb ratio (truly constant) raises no alarm
    assert not [a for _, a in raised if a == "SX.FEED.RATIO"], raised
    m = loop.alarms.metrics(rows[-1]["t"])
    assert not m.flooded and not m.chattered and m.peak_per_window["front-end"] <= 3, m


@pytest.mark.slow
def test_cell_efficiency_drop_tracked_and_salt_held(drift):
    (open_rows, _, _), (rows, raised, _) = drift
    assert np.abs(col(open_rows, "salt", 5.5)).max() > 2 * SALT_BAND  # a fixed feeder overfeeds
    assert np.abs(col(rows, "salt", 0)).max() < SALT_BAND, np.abs(col(rows, "salt", 0)).max()
    assert col(rows, "anode", 0).max() < 0.87  # anode effect avoided (MPC margin 0.85)
    err = np.abs(col(rows, "CELL1.CE.EST", 3.0) - col(rows, "ce", 3.0))
    assert err.max() < 4.0, err.max()  # CE % points, from 2.5 h after the drop
    ce = [t for t, a in raised if a == "CELL1.CE.LO"]
    assert ce and ce[0] <= 0.5 * HOUR + 2.5 * HOUR and len(ce) == 1, ce
    # the healthy cell stays quiet: the hourly salt assay moves its estimate by up to 0.07 wt%, which
    # the cell MPC corrects with a feed change small enough not to look like lost current efficiency
    cell2 = [a for _, a in raised if a.startswith("CELL2.")]
    assert not cell2, cell2


@pytest.mark.slow
@pytest.mark.parametrize("swing", [0.3, -0.3])
def test_feed_ratio_step_estimated_alarmed_and_purity_in_spec(config, swing):
    fault = Malfunction(kind="feed_swing", target="cascade", severity=swing, onset_s=0.5 * HOUR)
    rows, raised, loop = run(config, [fault], 4.5, closed=True)
    truth = loop.feed_ratio_design * (1 + swing)  # the swing scales the cascade's feed Dy/Tb ratio
    err = np.abs(col(rows, "SX.FEED.DY_TB.EST", 3.5) / truth - 1)
    assert err.max() < 0.13 and err[-1] < 0.08, (err, truth)  # 3 h / 4 h after the step
    assert col(rows, "purity", 0).min() > PURITY_MIN  # in spec (open loop stays in spec too: 99.82 / 99.91 %)
    ratio = [t for t, a in raised if a == "SX.FEED.RATIO"]
    assert ratio and ratio[0] <= 0.5 * HOUR + 3.0 * HOUR and len(ratio) == 1, ratio
    assert len(raised) <= 2, raised


def test_fouled_column_alarmed_from_its_pressure_drop(config):
    plant = TwinPlant(config)
    roles = {k: plant.snapshot()[f"ADS.COL{k}.ROLE"].value for k in (1, 2, 3)}
    lead = next(k for k, r in roles.items() if r == 1)
    inject(plant, Malfunction(kind="adsorbent_fouling", target=f"col{lead}", severity=0.5, onset_s=600.0,
                              ramp_s=1200.0))
    loop = ControlLoop(config, mpc_deadline_s=None, control_period_s=PERIOD)
    raised = []
    while plant.t < 1.0 * HOUR:
        plant.advance(PERIOD)
        tick = loop.step(plant.snapshot(), plant.t)
        raised += [(plant.t, e.alarm_id) for e in tick.raised]
    dp = [t for t, a in raised if a == f"ADS.COL{lead}.DP.HI"]
    assert dp and dp[0] - 600.0 <= 1500.0, raised  # within 25 min of the onset (ramp 20 min)
    assert len(raised) <= 3, raised
    assert "carousel" in tick.mpc and f"ADS.COL{lead}.CAPACITY.EST" in tick.published
