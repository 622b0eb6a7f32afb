"""The PLC sequences act on what the PLC measures (``twin.sequences``, config ``sequences``).

The carousel switches on the lag-outlet analyser (ADS.LAG.BREAKTHROUGH: period 10 min), not on
the lag outlet itself: with a reporting delay D the switch comes D later, and the lag lets
through the Dy+Tb that reaches its outlet meanwhile. Two runs of the shipped line from the design
start (lead saturated, lag loading), analyser noise off so a reading is the sampled value, delay
0 and 10 min; the lag outlet C/C0 and the carousel raffinate are recorded at every scan.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from pilot_config import ConfigError, default_config_path, load_config
from twin.malfunctions import Malfunction, inject
from twin.plant import TwinPlant

TAG = "ADS.LAG.BREAKTHROUGH"
DELAY = 600.0


@pytest.fixture(scope="module")
def config():
    return load_config(default_config_path())


def _with_tag(config, name: str, **changes):
    tags = [t.model_copy(update=changes) if t.name == name else t for t in config.tags]
    return config.model_copy(update={"tags": tags})


def _switches(plant):
    return [e for e in plant.events if "carousel switch" in e.text]


def _run_to_first_switch(config, *, after_s: float = 1200.0, malfunction=None, until_s=None):
    """Scan by scan until ``after_s`` past the first switch (or ``until_s``); rows (t, true lag
    C/C0, mol Dy+Tb through the carousel raffinate, mol/s Dy+Tb fed to the lead)."""
    plant = TwinPlant(config)
    if malfunction is not None:
        inject(plant, malfunction)
    blk = plant.flowsheet.blocks["adsorption"]
    i_bt, ii = blk.output_index["lag_breakthrough"], blk.input_index
    rows = []
    while True:
        plant.advance(plant.dt)
        fed = blk.u[ii["feed_flow"]] * (blk.u[ii["feed_Dy"]] + blk.u[ii["feed_Tb"]])
        rows.append((plant.t, blk.y[i_bt], blk.cumulative("raffinate", ("Dy", "Tb"))[1:3].sum(), fed))
        sw = _switches(plant)
        if (sw and plant.t >= sw[0].t + after_s) or (until_s is not None and plant.t >= until_s):
            return plant, np.array(rows)


@pytest.fixture(scope="module")
def runs(config):
    out = {}
    for delay in (0.0, DELAY):
        cfg = _with_tag(config, TAG, delay_s=delay, noise_sd=0.0)
        out[delay] = _run_to_first_switch(cfg)
    return out


def _at(rows, t):
    k = int(np.argmin(np.abs(rows[:, 0] - t)))
    assert abs(rows[k, 0] - t) < 1e-6, t
    return rows[k]


def _sampled(event) -> float:
    """Plant time of the sample a switch acted on (from its event)."""
    m = re.search(r"sampled (\d+) min before", event.text)
    assert m, event.text
    return event.t - 60.0 * float(m.group(1))


def test_the_analyser_delay_shifts_the_switch_by_the_delay(runs, config):
    period = config.tag(TAG).period_s
    (p0, r0), (pd, rd) = runs[0.0], runs[DELAY]
    e0, ed = _switches(p0)[0], _switches(pd)[0]
    assert _sampled(e0) == _sampled(ed)  # the same sample ...
    assert ed.t - e0.t == pytest.approx(DELAY, abs=config.simulation.sync_step_s)  # ... reported D later
    assert abs(ed.t - e0.t - DELAY) < period
    # one plant until the undelayed switch: the delay changes the decision, nothing else
    n = int(np.searchsorted(r0[:, 0], e0.t))
    np.testing.assert_array_equal(r0[:n, 1:], rd[:n, 1:])


def test_the_switch_acts_on_the_first_sample_at_the_limit_and_its_event_in_percent(runs, config):
    limit = config.adsorption.breakthrough_limit_fraction
    period = config.tag(TAG).period_s
    rows = runs[DELAY][1]  # (the undelayed run is the same plant up to the sample)
    for delay, (plant, _) in runs.items():
        ev = _switches(plant)[0]
        sampled = _sampled(ev)
        assert ev.t - sampled == pytest.approx(delay, abs=config.simulation.sync_step_s)
        m = re.search(r"C/C0 ([\d.]+) % on ADS\.LAG\.BREAKTHROUGH", ev.text)
        assert m, ev.text
        bt_sample = _at(rows, sampled)[1]
        assert float(m.group(1)) == pytest.approx(100.0 * bt_sample, rel=5e-3)  # % as the plot's axis
        assert bt_sample >= limit > _at(rows, sampled - period)[1]  # the first sample at the limit


def test_the_lag_breakthrough_at_the_switch_is_the_limit_plus_what_passes_during_the_delay(runs, config):
    limit = config.adsorption.breakthrough_limit_fraction
    period = config.tag(TAG).period_s
    (_, r0), (pd, rd) = runs[0.0], runs[DELAY]
    ts, td, dt = _sampled(_switches(pd)[0]), _switches(pd)[0].t, pd.dt
    # lag outlet C/C0 at each switch (the last scan before it): the sample at the limit (within
    # one analyser period of the front) for the undelayed PLC, that plus the delay's rise for
    # the delayed one
    at_limit, at_switch = _at(rd, ts)[1], _at(rd, td - dt)[1]
    assert _at(rd, ts - period)[1] < limit <= at_limit
    assert at_switch - at_limit > 2.0 * limit  # a steep front: the delay lets it run far past
    # the Dy+Tb that passes the lag during the delay, from the recorded lag outlet (trapezoid) ...
    w = (rd[:, 0] >= ts) & (rd[:, 0] <= td - dt)
    passed = np.trapezoid(rd[w, 1] * rd[w, 3], rd[w, 0])
    booked_d = _at(rd, td - dt)[2] - _at(rd, ts)[2]
    assert booked_d == pytest.approx(passed, rel=0.02)
    # ... is what the delayed carousel let through beyond the undelayed one (whose lag is fresh)
    booked_0 = _at(r0, td - dt)[2] - _at(r0, ts)[2]
    assert booked_0 < 0.01 * booked_d
    assert booked_d - booked_0 == pytest.approx(passed, rel=0.03)


def test_a_bad_analyser_holds_the_switch_while_the_lag_breaks_through(config):
    cfg = _with_tag(config, TAG, noise_sd=0.0)
    outage = Malfunction(kind="analyser_outage", target=TAG, severity=1.0, onset_s=3600.0)
    plant, rows = _run_to_first_switch(cfg, malfunction=outage, until_s=13.0 * 3600.0)
    assert rows[-1, 1] > 2 * config.adsorption.breakthrough_limit_fraction  # truth well past the limit
    assert not _switches(plant)  # the PLC saw no good reading: no switch


def test_the_tap_acts_on_the_cathode_analyser(runs, config):
    plant, _ = runs[DELAY]
    taps = [e for e in plant.events if e.unit == "cell1" and "tapped" in e.text]
    assert taps
    m = re.search(r"cathode grade ([\d.]+) wt% on CELL1\.CATHODE_TB", taps[0].text)
    assert m, taps[0].text
    assert float(m.group(1)) >= config.electrolysis.cells[0].cathode.tap_Tb_wt_pct
    tag = config.tag("CELL1.CATHODE_TB")
    # on an analyser result: a sample (every period from the start) reported its delay later
    assert (taps[0].t - tag.delay_s) % tag.period_s <= config.simulation.sync_step_s


def _bad_yaml(tmp_path, old: str, new: str):
    text = default_config_path().read_text(encoding="utf-8")
    assert text.count(old) == 1
    path = tmp_path / "line.yaml"
    path.write_text(text.replace(old, new), encoding="utf-8")
    return path


@pytest.mark.parametrize("old,new,field,why", [
    ("lag_breakthrough: ADS.LAG.BREAKTHROUGH}", "lag_breakthrough: ADS.BT_LIMIT_SP}",
     "sequences.carousel.lag_breakthrough", "ADS.BT_LIMIT_SP is a setpoint, not an instrument"),
    ("cathode_tb: CELL1.CATHODE_TB,", "cathode_tb: CELL1.TAP_SP,",
     "sequences.cells.cell1.cathode_tb", "CELL1.TAP_SP is a setpoint, not an instrument"),
    ("residual_metal: DIST.RESIDUAL}", "residual_metal: DIST.TEMP}",
     "sequences.distillation.residual_metal", "DIST.TEMP measures distillation.temperature"),
    ("temperature: CELL2.TEMP,", "temperature: CELL2.TEMPERATURE,",
     "sequences.cells.cell2.temperature", "no such tag"),
])
def test_a_sequence_bound_to_a_non_instrument_is_refused_in_one_line(tmp_path, old, new, field, why):
    path = _bad_yaml(tmp_path, old, new)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    [issue] = err.value.issues
    line = str(issue)
    assert "\n" not in line and line.startswith(f"{path}:")
    assert issue.path == field and why in line
    allowed = {"sequences.carousel.lag_breakthrough": "ADS.LAG.BREAKTHROUGH",
               "sequences.cells.cell1.cathode_tb": "CELL1.CATHODE_TB",
               "sequences.distillation.residual_metal": "DIST.RESIDUAL",
               "sequences.cells.cell2.temperature": "CELL2.TEMP"}[field]
    assert line.split("allowed: ", 1)[1].startswith(allowed)
