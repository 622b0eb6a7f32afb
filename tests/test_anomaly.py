"""Anomaly detectors on synthetic data with fixed seeds: false-alarm rates bounded, detection delays
bounded, closed forms checked."""

from __future__ import annotations

import math

import numpy as np
import pytest

from controllers.anomaly import (
    Cusum,
    PredictedAlarm,
    StuckSensorDetector,
    chi_square_test,
    mass_balance_check,
    predict_crossing,
)


def test_chi_square_false_alarm_rate_and_detection():
    rng = np.random.default_rng(11)
    s = np.array([[4.0, 1.0, 0.0], [1.0, 2.0, 0.5], [0.0, 0.5, 1.0]])
    c = np.linalg.cholesky(s)
    nus = (c @ rng.standard_normal((3, 20000))).T
    alarms = [chi_square_test(nu, s, alpha=0.01).alarm for nu in nus]
    assert 0.006 < np.mean(alarms) < 0.014  # alpha = 1 %
    r = chi_square_test([1.0, 0.0, 0.0], np.eye(3))
    assert r.nis == pytest.approx(1.0) and r.threshold == pytest.approx(16.266, abs=1e-3) and not r.alarm
    biased = [chi_square_test(nu + [0.0, 0.0, 4.0], s, alpha=0.01).alarm for nu in nus[:2000]]
    assert np.mean(biased) > 0.5  # a 4-sigma bias on one channel
    with pytest.raises(ValueError, match="positive definite"):
        chi_square_test([1.0, 1.0], [[1.0, 2.0], [2.0, 1.0]])


def test_cusum_false_alarm_rate_on_white_noise():
    rng = np.random.default_rng(3)
    c = Cusum(target=10.0, sigma=2.0)
    n = 100_000
    alarms = sum(c.update(x).alarm for x in 10.0 + 2.0 * rng.standard_normal(n))
    assert alarms / n < 2e-3  # ARL0 ~ 1000 samples (Siegmund): ~1e-3 per sample


def test_cusum_detects_half_sigma_step_and_drift():
    rng = np.random.default_rng(5)
    delays = []
    for _ in range(100):
        c = Cusum(target=0.0, sigma=1.0)
        for k in range(1, 1000):
            r = c.update(0.5 + rng.standard_normal())
            if r.alarm:
                delays.append(k)
                assert r.direction == 1
                break
    assert len(delays) == 100 and np.mean(delays) < 45 and max(delays) < 150  # ARL1 ~ 37
    c = Cusum(target=0.0, sigma=1.0)  # a downward ramp reaching -0.5 sigma after 100 samples
    k = next(k for k in range(1, 2000) if c.update(-0.005 * k + rng.standard_normal()).alarm)
    assert k < 160
    c.update(100.0)
    c.reset()
    assert (c.s_high, c.s_low, c.n) == (0.0, 0.0, 0)


def test_stuck_sensor_detected_only_while_process_moves():
    rng = np.random.default_rng(9)
    det = StuckSensorDetector(noise_sd=0.5, window=20, min_reference_span=2.0)
    ref = 550.0 - 0.3 * np.arange(200)  # the process cools 0.3 K per sample
    flags = []
    for k in range(200):
        meas = ref[k] + 0.5 * rng.standard_normal() if k < 100 else 520.3  # frozen at sample 100
        flags.append(det.update(meas, ref[k]).stuck)
    assert not any(flags[:100]) and all(flags[119:]) and not any(flags[100:118])
    quiet = StuckSensorDetector(noise_sd=0.5, window=20, min_reference_span=2.0)
    assert not any(quiet.update(500.0, 500.0).stuck for _ in range(50))  # frozen but steady process


def test_mass_balance_residual():
    ok = mass_balance_check(100.0, 60.0, 39.0, sd_in=0.5, sd_out=0.5, sd_accumulation=0.5)
    assert ok.residual == pytest.approx(1.0) and ok.sd == pytest.approx(math.sqrt(0.75)) and not ok.alarm
    leak = mass_balance_check(100.0, 60.0, 30.0, sd_in=0.5, sd_out=0.5, sd_accumulation=0.5, rel_tolerance=0.05)
    assert leak.alarm and leak.relative == pytest.approx(0.1)
    small = mass_balance_check(100.0, 60.0, 37.0, sd_in=0.1, sd_out=0.1, sd_accumulation=0.1, rel_tolerance=0.05)
    assert small.z > 4 and not small.alarm  # significant but below the relative tolerance


def test_predicted_crossing_closed_form():
    t = np.arange(0.0, 600.0, 60.0)
    p = predict_crossing(t, 1.0 + 0.01 * t, limit=10.0, direction="rising")  # reaches 10 at t = 900
    assert p.time_to_limit_s == pytest.approx(900.0 - 540.0) and p.slope_per_s == pytest.approx(0.01)
    assert predict_crossing(t, 5.0 - 0.01 * t, 10.0, "rising").time_to_limit_s == math.inf
    assert predict_crossing(t, 20.0 + 0 * t, 10.0, "rising").crossed


def test_predicted_alarm_warns_before_breakthrough():
    rng = np.random.default_rng(2)
    alarm = PredictedAlarm(limit=5.0, direction="rising", window_s=3600.0, horizon_s=1800.0)
    first = None
    for t in np.arange(0.0, 20000.0, 600.0):  # analyser every 10 min; C/C0 % rises after t = 6000 s
        v = max(0.0, 0.001 * (t - 6000.0)) + 0.05 * rng.standard_normal()
        r = alarm.update(t, v)
        alarm.update(t, v)  # a re-read of the same assay changes nothing
        if r.alarm and first is None:
            first = t
    crossing = 6000.0 + 5.0 / 0.001
    assert first is not None and crossing - 1800.0 - 600.0 <= first < crossing
