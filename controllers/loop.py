"""The control loop of the whole line: estimators → MPCs → guard, alarms and anomalies, per tick.

Pure logic, no I/O: the caller reads a snapshot (twin, OPC UA bridge, replay), calls
``step(snapshot, t)``, sends ``TickResult.writes`` to the plant, tells the loop what the plant
refused (``refused``), and records ``TickResult.points``. The same object runs in-process
(``pilot simulate --control``), live (``pilot run``) and in training.

Per tick, in this order:

1. each unit's estimator (``DelayedEkf``) with the inputs *applied over the interval that ends at
   t* = the writes the plant accepted last tick (absent: read from the snapshot);
2. each unit's MPC from that estimate; a held MPC (deadline miss, solver failure) holds its tags
   in the guard with the MPC's reason;
3. a cell's MPC also proposes ``<CELL>.REMOTE = 1`` (the cell supervisor then leaves heater and
   salt feeder to ``<CELL>.HEATER_SP`` / ``<CELL>.SALT_FEED_SP``): in auto it is written with the
   setpoints, in advisory it is shown, in manual held — the loop's mode decides who drives;
4. the guard (limits, rate, stale inputs, mode, watchdog); its ``to_write`` is ``writes``;
5. anomaly conditions (``loop_anomaly``), the PLC links and the denied writes → the alarm manager
   (ISA-18.2 lifecycle);
6. historian points: estimates, decisions (proposed / applied / solve time / held / cost, and
   ``LOOP.<loop>.MODE``: ``MODE_CODES``), alarm transitions (``twin.points`` builders).

Links and denials (live): the loop adds, for every PLC of the config (``plcs``), the external
alarm ``PLC.<name>.COMM`` (priority 1, on the value of ``PLC.<name>.LINK``: 1 up, 0 down), active
while ``step(..., links={name: up})`` says that PLC is down, and for every writable tag of a guard
loop ``<TAG>.DENIED`` (priority 2), active while the guard holds the tag as denied by the PLC
(``denied``: BadUserAccessDenied; cleared by a mode change of its loop). ``link_alarms`` steps
only the alarms when no PLC is up (no tick runs then). ``restart(read_back)``: after a PLC's
reconnect, the re-read values restart the rate limits of its tags (bumpless).

Units: ``cell<k>`` (one per electrolysis cell), ``cascade`` and (unless ``carousel=False``)
``carousel``; the guard loop names in the YAML are the unit names.

MPC deadline: ``mpc_deadline_s="period"`` (default) gives each MPC 0.2 × the control period
(linearisation + QP), a float sets it, ``None`` disables it.

Slow carousel work (the estimator's capacity fits, 0.2–2 s, and breakthrough forecasts, 0.1–1 s;
the decision's forecasts, 0.2–0.7 s when no column stands by) runs in one worker
(``worker="thread"``, default, or ``"process"`` for the estimator's jobs, the decision then in a
thread), submitted at the tick where it is due and applied at a later tick (``slow_work``, see
``carousel_worker``): ``"worker"``
(default live) at the first tick after it finished, the tick never waits; ``"next_tick"``
(default on the twin) at the next tick, waiting for it if needed, so that virtual-clock runs and
replays are deterministic; ``"inline"`` in the tick itself. ``close()`` (or ``with ControlLoop(...)``)
cancels the jobs not started and joins the worker. BLAS: the loop's matrices are small, and a
second OpenBLAS thread only spins on the other core, so the process's BLAS runs on
``blas_threads`` (1; None: as it was) threads while the loop is open (``threadpoolctl``).
Determinism (training replays): with ``mpc_deadline_s=None`` the MPC deadline is disabled (60 s,
the configs' maximum) and, with ``timing_points=False``, no wall-clock quantity enters the points;
then the same snapshots and times give the same ``TickResult`` except ``latency_s`` and the MPC
results' solve-time fields (OSQP and the estimators' predictions are deterministic; each MPC's
QP starts from its previous tick's solution, so a run repeats when its ticks do, from the first).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Literal

from pilot_config.base import MOLAR_MASS_G_PER_MOL
from pilot_config.control import ExternalAlarmConfig
from twin.points import (
    alarm_point,
    alarm_state_points,
    decision_points,
    estimate_points,
)
from twin.signals import Point, Sample, Snapshot, WriteResult

from . import carousel_worker as cw
from . import estimation_carousel as ec
from . import mpc_carousel as mc
from .alarms import AlarmManager
from .alarms_support import ActiveAlarm, AlarmState, JournalEntry
from .estimation import EstimateResult, EstimatorConfig
from .estimation_cascade import cascade_estimator
from .estimation_cell import cell_estimator
from .guard import Guard
from .loop_anomaly import AnomalyChecks, AnomalyConfig
from .mpc import MpcResult
from .mpc_cascade import CascadeMpc, CascadeMpcConfig
from .mpc_cell import CellMpc, CellMpcConfig

__all__ = ["MODE_CODES", "NO_DEADLINE_S", "ControlLoop", "TickResult", "UnitController", "every_loop", "plc_units"]
log = logging.getLogger(__name__)
NO_DEADLINE_S = 60.0  # the MPC configs' largest deadline: "disabled" on any realistic period
DEADLINE_FRACTION = 0.2  # default deadline of each MPC solve: this fraction of the control period
#: the loop holds Tb purity this far above its minimum (the MPC's own default, 0.05 %, let a 10 %
#: extractant loss take purity to 99.44 % against a 99.5 % minimum: model error > margin)
CASCADE_MARGIN_PCT = 0.25
_RAISED = {AlarmState.UNACK_ACTIVE}
_CLEARED = {AlarmState.NORMAL, AlarmState.RTN_UNACK}
#: ``LOOP.<loop>.MODE`` decision points (every tick, per guard loop of a unit): the mode as a number
MODE_CODES = {"manual": 0.0, "advisory": 1.0, "auto": 2.0}


@dataclass
class UnitController:
    """One controlled unit: its estimator, its MPC (None: estimate only) and extra proposals."""

    name: str
    ekf: Any
    mpc: Any | None
    plant_unit: str
    extra: dict[str, float] = field(default_factory=dict)  # proposed with the MPC's moves
    takes_period: bool = True  # the MPC's step takes control_period_s
    rebase: bool = False  # integrates over absolute times: give it t − t₀ (and sample times too)

    def solve(self, est, snapshot, t: float, period: float, applied: Mapping[str, float]) -> MpcResult:
        if self.takes_period:
            return self.mpc.step(est, snapshot, t, control_period_s=period, applied=applied)
        return self.mpc.step(est, snapshot, t, applied=applied)


@dataclass(frozen=True)
class TickResult:
    t: float
    writes: Mapping[str, float]  # send these to the plant (guard: auto loops, watchdog)
    proposals: Mapping[str, float]  # what the MPCs proposed (held MPCs: the values in effect)
    applied: Mapping[str, float]  # guarded values: written (auto) or shown (advisory)
    advisory: Mapping[str, float]  # guarded, not written (advisory loops)
    held: Mapping[str, str]  # tag -> why nothing was written
    clamped: Mapping[str, tuple[float, float, str]]
    published: Mapping[str, float]  # '<TAG>.EST' -> value (estimates, engineering units)
    alarms: tuple[JournalEntry, ...]  # alarm transitions this tick (incl. operator actions)
    active_alarms: tuple[ActiveAlarm, ...]
    anomalies: Mapping[str, bool]  # external-alarm conditions computed this tick
    modes: Mapping[str, str]
    watchdog: int
    points: tuple[Point, ...]
    estimates: Mapping[str, EstimateResult]
    mpc: Mapping[str, MpcResult]
    latency_s: float  # wall time of the tick (not deterministic)

    @property
    def raised(self) -> tuple[JournalEntry, ...]:
        return tuple(e for e in self.alarms if e.to_state in _RAISED)


class ControlLoop:
    """Estimators, MPCs, guard, alarms and anomaly checks of a ``PilotLineConfig``."""

    def __init__(self, config, *, target: Literal["twin", "live"] = "twin",
                 session: Literal["standalone", "training", "live"] = "standalone",
                 modes: Mapping[str, str] | None = None, mpc_deadline_s: float | str | None = "period",
                 timing_points: bool = True, session_label: str = "",
                 estimator: EstimatorConfig | None = None, anomaly: AnomalyConfig | None = None,
                 cell_mpc: CellMpcConfig | None = None, cascade_mpc: CascadeMpcConfig | None = None,
                 control_period_s: float | None = None, carousel: bool = True,
                 plcs: Mapping[str, str] | None = None, slow_work: cw.Apply | None = None,
                 worker: Literal["thread", "process"] = "thread", blas_threads: int | None = 1):
        guard_cfg = config.control.guard
        if control_period_s is not None:
            guard_cfg = guard_cfg.model_copy(update={"control_period_s": control_period_s})
        self.guard = Guard(guard_cfg, config.tags, target=target, session=session)  # LiveWriteForbidden first
        self.config = config
        self.period = guard_cfg.control_period_s
        if mpc_deadline_s == "period":
            mpc_deadline_s = min(DEADLINE_FRACTION * self.period, NO_DEADLINE_S)
        self.deadline_s = NO_DEADLINE_S if mpc_deadline_s is None else float(mpc_deadline_s)
        self.timing_points = timing_points
        self.session = session_label or ("training" if session == "training" else "")
        self.plcs = dict(plc_units(config) if plcs is None else plcs)  # PLC name -> plant unit of its alarm
        self.denial_ids = {tag: f"{tag}.DENIED" for tag in self.guard.loop_of}
        self.alarms = AlarmManager(config.control.alarms, config.tags, self._extra_alarms())
        self._state_recorded: set[str] = set()  # alarms with a .STATE point in this run
        self.cell_mpc_cfg = (cell_mpc or CellMpcConfig()).model_copy(update={"deadline_s": self.deadline_s})
        self.cascade_mpc_cfg = (cascade_mpc or CascadeMpcConfig(margin_pct=CASCADE_MARGIN_PCT)).model_copy(
            update={"deadline_s": self.deadline_s})
        self.with_carousel = carousel
        self.slow_work: cw.Apply = slow_work or ("worker" if target == "live" else "next_tick")
        self._blas = cw.blas_limit(blas_threads)
        off = self.slow_work == "inline" or not carousel
        self._executor = None if off else cw.make_executor(worker)  # the estimator's jobs
        self._decisions = None if off or worker == "thread" else cw.make_executor("thread")  # the MPC's
        self.units = self._build(config, estimator)
        cascade = next((u for u in self.units if u.name == "cascade"), None)
        self.feed_ratio_design = _feed_ratio(cascade.ekf.model) if cascade else None
        self.anomalies = AnomalyChecks(config.control.alarms, anomaly, self.feed_ratio_design, config.tags)
        if self.anomalies.unknown_ids:
            log.warning("external alarms without a condition in the loop (kept frozen): %s",
                        self.anomalies.unknown_ids)
        for loop, mode in (modes or {}).items():
            self.guard.set_mode(loop, mode)  # type: ignore[arg-type]
        self._applied: dict[str, float] = {}
        self._links: dict[str, bool] = {}
        self._t0: float | None = None  # time of the first tick (rebased units count from it)
        self.ticks = 0

    # -- construction --------------------------------------------------------------------
    def _extra_alarms(self) -> list[ExternalAlarmConfig]:
        """The comm-loss alarm of every PLC and the denied-write alarm of every loop tag (built
        without validation: PLC names may hold '-', which alarm ids of the YAML do not)."""
        units = {t.name: t.plant_unit for t in self.config.tags}
        comm = [ExternalAlarmConfig.model_construct(
            id=f"PLC.{n}.COMM", tag=f"PLC.{n}.LINK", priority=1, on_delay_s=0.0, off_delay_s=0.0, unit=u,
            description=f"communication with PLC {n} lost") for n, u in self.plcs.items()]
        denied = [ExternalAlarmConfig.model_construct(
            id=aid, tag=tag, priority=2, on_delay_s=0.0, off_delay_s=0.0, unit=units[tag],
            description=f"the PLC denies writes of {tag}") for tag, aid in self.denial_ids.items()]
        return comm + denied

    def _build(self, config, est_cfg: EstimatorConfig | None) -> list[UnitController]:
        tags = {t.name for t in config.tags}
        units = []
        for c in config.electrolysis.cells:
            mpc = CellMpc(c, config.tags, self.cell_mpc_cfg)
            tp = mpc.tp
            extra = {f"{tp}.REMOTE": 1.0} if f"{tp}.REMOTE" in tags else {}
            units.append(UnitController(c.name, cell_estimator(c, est_cfg), mpc, c.name, extra))
        ekf = cascade_estimator(config, est_cfg)
        units.append(UnitController("cascade", ekf, CascadeMpc(ekf.model, config.tags, self.cascade_mpc_cfg),
                                    "extraction"))
        # the carousel keeps its own deadline (its slow cadence) unless the loop disables deadlines
        if self.with_carousel:
            units.append(_carousel(config, NO_DEADLINE_S if self.deadline_s >= NO_DEADLINE_S else None,
                                   self._executor, self._decisions or self._executor, self.slow_work))
        for u in units:
            self._engineered_limits(u.mpc)
        return units

    def _engineered_limits(self, mpc) -> None:
        """The guard's engineered limits (``control.guard.limits``) bound the MPC's own plan: an MPC
        planning moves the guard then clips would mispredict (and, on a nonlinear cascade, overshoot)."""
        if mpc is None or not all(hasattr(mpc, a) for a in ("u_min", "u_max", "rates", "mv_names")):
            return
        for i, tag in enumerate(mpc.mv_names):
            if tag in self.guard.limits:
                low, high, rate = self.guard.limits[tag]
                mpc.u_min[i], mpc.u_max[i] = max(mpc.u_min[i], low), min(mpc.u_max[i], high)
                mpc.rates[i] = min(mpc.rates[i], rate)

    # -- the tick ------------------------------------------------------------------------
    def step(self, snapshot: Snapshot, t: float, links: Mapping[str, bool] | None = None) -> TickResult:
        """One tick at plant time ``t``; ``links``: PLC name -> link up (None: as ``set_links`` last
        said; never said: the comm-loss alarms stay frozen)."""
        started = time.perf_counter()
        links = self._links if links is None else links
        applied_prev = dict(self._applied)
        estimates: dict[str, EstimateResult] = {}
        results: dict[str, MpcResult] = {}
        proposals: dict[str, float] = {}
        hold: dict[str, str] = {}
        self._t0 = t if self._t0 is None else self._t0
        for u in self.units:
            snap_u, t_u = (_rebased(snapshot, self._t0), t - self._t0) if u.rebase else (snapshot, t)
            est = u.ekf.step(snap_u, applied_prev, t_u)
            estimates[u.name] = est
            if u.mpc is None:
                continue
            res = u.solve(est, snap_u, t_u, self.period, applied_prev)
            results[u.name] = res
            moves = {**res.mv, **u.extra}
            proposals.update(moves)
            if res.held:
                hold.update({tag: f"MPC held: {res.held_reason}" for tag in moves})
        g = self.guard.step(proposals, snapshot, t, hold=hold)
        published = self._published(estimates)
        nis = {k: v for est in estimates.values() for k, v in est.nis.items()}
        innovations = {k: v for est in estimates.values() for k, v in est.innovations.items()}
        conditions = self.anomalies.step(snapshot, t, published, nis, innovations)
        a = self.alarms.step(*self._alarm_inputs(snapshot, t, links, conditions))
        applied = {**g.advisory, **g.to_write}
        self._applied = {k: v for k, v in g.to_write.items() if k in proposals}
        points = self._points(t, estimates, results, published, applied, a.transitions)
        self.ticks += 1
        return TickResult(t, dict(g.to_write), proposals, applied, dict(g.advisory), dict(g.held),
                          dict(g.clamped), published, a.transitions, a.active, conditions, dict(g.mode),
                          g.watchdog, tuple(points), estimates, results, time.perf_counter() - started)

    def _alarm_inputs(self, snapshot: Snapshot, t: float, links: Mapping[str, bool] | None,
                      conditions: Mapping[str, bool]) -> tuple[Snapshot, float, dict[str, bool]]:
        """(snapshot with the link tags, t, conditions with the comm-loss and denied alarms)."""
        out = dict(conditions)
        out.update({aid: tag in self.guard.denied for tag, aid in self.denial_ids.items()})
        links = {n: up for n, up in (links or {}).items() if n in self.plcs}
        if not links:
            return snapshot, t, out
        out.update({f"PLC.{n}.COMM": not up for n, up in links.items()})
        snap = {**snapshot, **{f"PLC.{n}.LINK": Sample(1.0 if up else 0.0, t) for n, up in links.items()}}
        return snap, t, out

    def link_alarms(self, snapshot: Snapshot, t: float, links: Mapping[str, bool]
                    ) -> tuple[tuple[JournalEntry, ...], list[Point]]:
        """Step only the alarm manager (no PLC is up, no tick runs): the comm-loss alarms follow
        ``links``, every other external alarm stays frozen. Returns (transitions, alarm points)."""
        a = self.alarms.step(*self._alarm_inputs(snapshot, t, links, {}))
        return a.transitions, self._alarm_points(a.transitions)

    def set_links(self, links: Mapping[str, bool]) -> None:
        """The PLC links (name -> up) the next ticks' comm-loss alarms follow."""
        self._links = dict(links)

    def denied(self, tag: str, reason: str) -> bool:
        """The PLC denied a write of ``tag`` (BadUserAccessDenied): held, not proposed again, its
        ``<TAG>.DENIED`` alarm raised on the next tick. True when newly denied."""
        self._applied.pop(tag, None)
        return self.guard.deny(tag, reason)

    def restart(self, read_back: Mapping[str, Sample]) -> None:
        """A PLC came back: its re-read writable tags restart the guard's rate limits (bumpless)
        and the estimators take them from the snapshot until the next accepted write."""
        self.guard.restart(read_back)
        for tag in read_back:
            self._applied.pop(tag, None)

    def refused(self, result: WriteResult | Mapping[str, str]) -> None:
        """The plant refused some of the last writes: they were not applied (the estimators read
        the snapshot instead) and their rate limit restarts from the read-back."""
        refused = result.refused if isinstance(result, WriteResult) else result
        if refused:
            self.guard.refused(refused)
            for tag in refused:
                self._applied.pop(tag, None)

    def accepted(self, writes: Mapping[str, float], t: float) -> None:
        """The plant took ``writes`` at the tick ``t`` in place of this loop's own (a replay: the
        recorded loop's accepted writes): the estimators take them as the inputs applied over the
        next interval and the guard's rate limits move from them."""
        self._applied = {k: float(v) for k, v in writes.items()}
        self.guard.accepted(writes, t)

    def close(self) -> None:
        """Cancel the slow jobs not started, join the worker (a running job finishes first) and
        give the process its BLAS threads back. Idempotent; the loop is not stepped after."""
        for part in (p for u in self.units for p in (u.ekf, u.mpc) if hasattr(p, "cancel")):
            part.cancel()
        for pool in (self._executor, self._decisions):
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        self._executor = self._decisions = None
        if self._blas is not None:
            self._blas.restore_original_limits()
            self._blas = None

    def __enter__(self) -> ControlLoop:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def set_mode(self, loop: str, mode: str) -> None:
        self.guard.set_mode(loop, mode)  # type: ignore[arg-type]

    @property
    def modes(self) -> dict[str, str]:
        return dict(self.guard.modes)

    # -- outputs -------------------------------------------------------------------------
    def _published(self, estimates: Mapping[str, EstimateResult]) -> dict[str, float]:
        out: dict[str, float] = {}
        for est in estimates.values():
            out.update(est.published)
        dy, tb = out.get("SX.FEED.Dy.EST"), out.get("SX.FEED.Tb.EST")
        if dy is not None and tb and tb > 0:
            out["SX.FEED.DY_TB.EST"] = dy / tb
        return {k: float(v) for k, v in out.items() if math.isfinite(v)}

    def _points(self, t, estimates, results, published, applied, transitions) -> list[Point]:
        s = self.session
        pts: list[Point] = []
        units = {u.name: u for u in self.units}
        for name, est in estimates.items():
            pts += estimate_points(units[name].plant_unit, t, est.published, est.innovations, est.nis, s)
        if "SX.FEED.DY_TB.EST" in published:
            pts += estimate_points("extraction", t, {"SX.FEED.DY_TB.EST": published["SX.FEED.DY_TB.EST"]},
                                   session=s)
        for name, res in results.items():
            unit = units[name]
            mine = [*res.mv, *unit.extra]
            pts += decision_points(unit.plant_unit, t, {} if res.held else res.mv,
                                   {k: applied[k] for k in mine if k in applied},
                                   res.solve_time_s if self.timing_points else 0.0, res.held,
                                   None if res.held else res.cost, s)
            if not self.timing_points:
                pts = [p for p in pts if not p.tag.endswith(".SOLVE_MS")]
        pts += [Point("decision", f"LOOP.{lp}.MODE", units[lp].plant_unit, MODE_CODES[m], t, "good", s)
                for lp, m in self.guard.modes.items() if lp in units]
        return pts + self._alarm_points(transitions)

    def _alarm_points(self, transitions) -> list[Point]:
        pts: list[Point] = []
        for e in transitions:
            if e.to_state in _RAISED or (e.to_state in _CLEARED and e.from_state != AlarmState.RTN_UNACK):
                unit = self.alarms.defs[self.alarms.index[e.alarm_id]].unit
                pts.append(alarm_point(e.alarm_id, unit, e.to_state in _RAISED, e.t, self.session))
        for e in transitions:
            unit = self.alarms.defs[self.alarms.index[e.alarm_id]].unit
            until = self.alarms.shelved_until(e.alarm_id) if e.to_state == AlarmState.SHELVED else None
            first = e.alarm_id not in self._state_recorded
            self._state_recorded.add(e.alarm_id)
            pts += alarm_state_points(e.alarm_id, unit, e.to_state, e.priority, e.t, e.operator, until, first,
                                      self.session)
        return pts


def plc_units(config) -> dict[str, str]:
    """PLC name -> the plant unit its comm-loss alarm belongs to (the first unit it serves, else
    ``plc``), for every PLC of the config (one ``plc`` on a single-endpoint config)."""
    opcua = getattr(config, "opcua", None)
    plcs = opcua.resolved_plcs() if opcua is not None and hasattr(opcua, "resolved_plcs") else []
    if not plcs:
        return {"plc": "plc"}
    return {p.name: (list(p.units)[0] if getattr(p, "units", None) else "plc") for p in plcs}


def every_loop(config, mode: str) -> dict[str, str]:
    """``modes`` for ``ControlLoop``: every loop of ``control.guard.loops`` in ``mode``."""
    return {lp.name: mode for lp in config.control.guard.loops}


def _rebased(snapshot: Snapshot, t0: float) -> dict[str, Sample]:
    """The snapshot with source times counted from ``t0`` (live times are Unix seconds, ~1.8e9:
    an ODE integrated over [t, t + 60] at that magnitude loses its step-size resolution)."""
    if t0 == 0.0:
        return dict(snapshot)
    return {k: Sample(s.value, s.source_time - t0, s.quality) for k, s in snapshot.items()}


def _feed_ratio(model) -> float | None:
    """Design Dy/Tb mass ratio of the cascade feed (as published by the cascade estimator)."""
    ii, u = model.map.ii, model.u_nominal
    dy = u[ii["feed_Dy"]] * MOLAR_MASS_G_PER_MOL["Dy"]
    tb = u[ii["feed_Tb"]] * MOLAR_MASS_G_PER_MOL["Tb"]
    return float(dy / tb) if tb > 0 else None


def _carousel(config, deadline_s: float | None, jobs: Executor | None, decisions: Executor | None,
              apply: cw.Apply) -> UnitController:
    """The carousel's shadow estimator and its MPC (feed flow, switch limit), their slow work in
    ``jobs`` and ``decisions`` unless ``apply`` is inline; ``deadline_s`` None: the carousel MPC's
    own deadline."""
    mpc_cfg = mc.CarouselMpcConfig() if deadline_s is None else mc.CarouselMpcConfig(deadline_s=deadline_s)
    ekf = ec.CarouselEstimator(config, start=config.simulation.start, executor=jobs, apply=apply)
    mpc = mc.CarouselMpc(config, mpc_cfg)
    if apply != "inline":
        mpc = cw.DeferredMpc(mpc, decisions, apply)
    return UnitController("carousel", ekf, mpc, "adsorption", takes_period=False, rebase=True)
