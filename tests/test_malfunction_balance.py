"""Every malfunction conserves mass: the line's per-element balance (``twin.ledger``: every feed,
every outlet, every inventory) closes within 0.1 % while a fault ramps in, holds, ramps out and after
it has cleared; crud entrainment carries organic and its metal out with the raffinate, where the
ledger books it and the organic-in-raffinate reading shows it."""

from __future__ import annotations

import pytest
from jacobian_check import assert_jacobian_matches

from pilot_config import load_config
from pilot_config.base import SPECIES
from twin.malfunctions import PROCESS_KINDS, SIGNAL_KINDS, Malfunction, inject
from twin.plant import TwinPlant

ONSET_S, RAMP_S, HOLD_S = 600.0, 300.0, 1800.0
END_S = ONSET_S + HOLD_S + RAMP_S + 900.0
TARGETS = {
    "feed_swing": ("cascade", 0.5), "extractant_degradation": ("extraction", 0.5),
    "crud_entrainment": ("extraction", 0.5), "adsorbent_fouling": ("col1", 0.5),
    "anode_effect": ("cell1", 0.5), "heater_failure": ("cell1", 0.8),
    "electrolyte_contamination": ("cell1", 0.35), "pump_trip": ("SX.ORG.FLOW_SP", 0.7),
    "frozen_value": ("CELL1.TEMP", 1.0), "drift": ("CELL1.TEMP", 50.0),
    "noise_burst": ("CELL1.TEMP", 5.0), "bad_status": ("CELL1.TEMP", 1.0),
    "analyser_outage": ("SX.TB_PURITY", 1.0),
}
CASES = [(k, *TARGETS[k]) for k in PROCESS_KINDS + SIGNAL_KINDS] + [("feed_swing", "leach", 0.5)]


@pytest.fixture(scope="module")
def line():
    return load_config()


def worst_balance(plant: TwinPlant, until_s: float, every_s: float = 300.0) -> dict[str, float]:
    """Advance to ``until_s``; the largest |balance error| per element seen at every ``every_s``."""
    worst = dict.fromkeys(SPECIES, 0.0)
    while plant.t < until_s - 1e-9:
        plant.advance(min(every_s, until_s - plant.t))
        for sp, err in plant.mass_balance().items():
            worst[sp] = max(worst[sp], abs(err))
    return worst


@pytest.mark.parametrize("kind,target,severity", CASES, ids=[f"{k}@{t}" for k, t, _ in CASES])
def test_balance_closes_during_and_after_the_fault(line, kind, target, severity):
    plant = TwinPlant(line)
    inject(plant, Malfunction(kind=kind, target=target, severity=severity, onset_s=ONSET_S,
                              ramp_s=RAMP_S, duration_s=HOLD_S))
    during = worst_balance(plant, ONSET_S + HOLD_S + RAMP_S)
    assert not plant.faults.active  # cleared
    after = worst_balance(plant, END_S)
    assert max(during.values()) < 1e-3, during
    assert max(after.values()) < 1e-3, after


def test_cascade_jacobian_with_entrainment_matches_finite_differences(line):
    """The analytic Jacobian holds with crud on the interface and organic already lost."""
    import dataclasses

    import numpy as np

    from twin.extraction import Cascade, params_from_config

    p0 = params_from_config(line.extraction)
    p = dataclasses.replace(p0, interface_clear=0.4)
    c = Cascade("sx", p)
    u = c.design_inputs(p, np.full(len(SPECIES), 5.0))
    x = c.initial_state(p)
    x[: c.n_stage_states] += np.random.default_rng(2).uniform(0.0, 20.0, c.n_stage_states)
    x[c.i_entrained] = 0.2 * p.v_org_settler.sum()
    assert_jacobian_matches(c, x, u, p)


def test_entrained_organic_leaves_with_its_metal_in_the_raffinate(line):
    """Crud entrainment: the organic lost from the loop is the organic the raffinate carried
    (∫Q_e dt), the metal it held is in the raffinate outlet the ledger books, the raffinate's
    organic reading shows it (ppm of volume) and the organic inventory does not come back."""
    plant = TwinPlant(line)
    sx = plant.flowsheet.blocks[line_extraction(plant)]
    inv0 = plant.signal("extraction.organic_inventory")
    raff0 = plant.ledger.stream(plant.line.extraction, "raffinate")
    inject(plant, Malfunction(kind="crud_entrainment", target="extraction", severity=0.5, onset_s=ONSET_S,
                              duration_s=HOLD_S))
    plant.advance(ONSET_S + 600.0)
    ppm = plant.snapshot()["SX.RAFF.ORG"].value
    q_raff = plant.signal("extraction.raffinate.flow")
    phi = 0.5 * sx.p.crud_entrainment  # φ_crud (1 − f_clear), f_clear = 1 − s
    fill = 1.0 - sx.x[sx.state_index["cum_raffinate_organic"]] / sx.p.v_org_settler.sum()
    assert ppm == pytest.approx(1e6 * phi * fill / (1.0 + phi * fill), rel=2e-3)  # noise 2 ppm
    plant.advance(HOLD_S + 1800.0)
    assert plant.snapshot()["SX.RAFF.ORG"].value < 10.0  # cleared: no organic in the raffinate
    lost = sx.x[sx.state_index["cum_raffinate_organic"]]
    assert lost > 0.5 * phi * q_raff * HOLD_S  # litres of organic, not a trace
    assert inv0 - plant.signal("extraction.organic_inventory") == pytest.approx(lost, rel=1e-9)
    dy = plant.ledger.stream(plant.line.extraction, "raffinate")[SPECIES.index("Dy")] - raff0[SPECIES.index("Dy")]
    clean = TwinPlant(line)
    clean.advance(plant.t)
    dy_clean = clean.ledger.stream(clean.line.extraction, "raffinate")[SPECIES.index("Dy")] - raff0[SPECIES.index("Dy")]
    assert dy > 10.0 * dy_clean  # the loaded organic's Dy went out with the raffinate
    assert max(abs(e) for e in plant.mass_balance().values()) < 1e-6


def line_extraction(plant: TwinPlant) -> str:
    return plant.line.extraction


def test_cascade_feed_swing_is_a_booked_source(line):
    """A feed swing on the cascade lets Dy in (and holds Tb back) past the feed meter: the ledger
    books exactly that as its own source, so the balance still closes."""
    plant = TwinPlant(line)
    inject(plant, Malfunction(kind="feed_swing", target="cascade", severity=1.0, onset_s=0.0))
    plant.advance(3600.0)
    upset = plant.ledger.upset_in
    dy, tb = SPECIES.index("Dy"), SPECIES.index("Tb")
    metered = plant.ledger.stream("eluate_tank", "out") - TwinPlant(line).ledger.stream("eluate_tank", "out")
    assert upset[dy] == pytest.approx((2**0.5 - 1.0) * metered[dy], rel=1e-9)  # Dy × √(1+s)
    assert upset[tb] == pytest.approx((2**-0.5 - 1.0) * metered[tb], rel=1e-9)  # Tb ÷ √(1+s)
    assert all(upset[i] == 0.0 for i in range(len(SPECIES)) if i not in (dy, tb))
    assert max(abs(e) for e in plant.mass_balance().values()) < 1e-6
