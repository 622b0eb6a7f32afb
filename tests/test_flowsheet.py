"""Flowsheet mechanics: exact stream transfer between units and element conservation."""

import numpy as np
import pytest

from pilot.durations import parse_duration
from pilot_config.base import SPECIES
from twin.flowsheet import Block, Connection, Flowsheet
from twin.tank import Tank, TankParams

NC = len(SPECIES) + 1


def two_tanks(q_in=1e-5, q_mid=8e-6, q_out=5e-6):
    p = TankParams(capacity_m3=1.0, low_volume_m3=0.01)
    a, b = Tank("a"), Tank("b")
    conc = np.linspace(1.0, 2.0, NC)
    blk_a = Block("a", a, p, a.initial_state(0.2, conc))
    blk_b = Block("b", b, p, b.initial_state(0.1, np.zeros(NC)))
    blk_a.u[:] = [q_in, *(3.0 * conc), q_mid]
    blk_b.set_input("out_flow", q_out)
    fs = Flowsheet([blk_a, blk_b], [Connection("a", "out", "b", "in")])
    return fs, blk_a, blk_b


def test_stream_between_units_conserves_every_species():
    fs, a, b = two_tanks()
    held0 = fs.inventory()
    fed = np.zeros(len(SPECIES))
    for _ in range(50):
        fed += a.u[0] * a.u[1 : 1 + len(SPECIES)] * 60.0
        fs.step(60.0)
    left = b.cumulative("out", SPECIES)[1 : 1 + len(SPECIES)]
    err = (fed - left - (fs.inventory() - held0)) / fed
    assert np.max(np.abs(err)) < 1e-8
    # the downstream tank really received the upstream outflow (not zero, not doubled)
    assert b.x[0] == pytest.approx(0.1 + (8e-6 - 5e-6) * 3000.0, rel=1e-6)


def test_tank_matches_closed_form_washout():
    """Constant volume (Q_in = Q_out), clean inflow: n(t) = n0 exp(-Q t / V)."""
    p = TankParams(capacity_m3=1.0, low_volume_m3=0.01)
    tank = Tank("t")
    blk = Block("t", tank, p, tank.initial_state(0.5, np.ones(NC)))
    blk.u[:] = [1e-4, *np.zeros(NC), 1e-4]
    fs = Flowsheet([blk], [])
    for _ in range(60):
        fs.step(60.0)
    expected = 0.5 * np.exp(-1e-4 * 3600.0 / 0.5)
    assert blk.x[1] == pytest.approx(expected, rel=1e-5)


def test_pump_stops_on_empty_tank():
    fs, a, b = two_tanks(q_in=0.0, q_mid=1e-4, q_out=0.0)
    for _ in range(100):
        fs.step(60.0)
    assert a.x[0] == pytest.approx(0.01, abs=0.003)  # held near the low level, never negative
    assert a.y[a.output_index["out_flow"]] < 1e-6


def test_connection_errors_are_named():
    fs, a, b = two_tanks()
    with pytest.raises(ValueError, match="no outlet 'nope'"):
        Flowsheet([a, b], [Connection("a", "nope", "b", "in")])
    with pytest.raises(ValueError, match="flow order"):
        Flowsheet([b, a], [Connection("a", "out", "b", "in")])


@pytest.mark.parametrize("text,seconds", [("24h", 86400), ("90min", 5400), ("1h30min", 5400),
                                          ("2d", 172800), ("45", 45)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["-1h", "0", "abc", "5 parsecs", "999d", "h"])
def test_bad_durations_say_what_is_allowed(text):
    with pytest.raises(ValueError, match="positive duration"):
        parse_duration(text)
