"""The SimPy plant: the flowsheet's ODEs advanced on a virtual clock, with the discrete events
a PLC and its operators add (carousel switching, batch taps, distillation batches, analyser
samples with their delay, sensor noise from a seeded generator).

Time is the SimPy clock in plant seconds. Physics advances on a synchronisation grid
(``simulation.sync_step_s``); its timeouts have URGENT priority, so at every grid time the
state is brought up to date *before* any discrete event at that time looks at it, and a
decision taken at time t applies to the step [t, t + dt]. Discrete delays are rounded up to
the grid, so no event is ever applied to the past.

Adaptive step (``simulation.max_sync_step_s`` above ``sync_step_s``): the blocks joined by
streams (carousel, eluate tank, cascade: ``Flowsheet.joined``) step together, as one co-simulation
step of up to ``max_sync_step_s`` (a whole multiple of the grid), and end a step early where
something needs their state:

- a timeout of ``after`` falls due (analyser samples and reports, the carousel's offline phases,
  malfunction onsets): the step ends there, before the waiting process looks at the plant;
- a write: they are brought up to the write's time first (``sync``), so the new inputs apply
  from then on; so are they when a sequence or a malfunction changes one of them (inputs,
  parameters, model) at a step of the grid (``_apply_from_now``);
- ``advance`` ends synchronised (unless told ``sync=False``: the caller then sees their latest
  scan, taken at their latest step, as a PLC between scans would).

The other blocks (the PLC's setpoints, the cells, distillation: under the PLC loops that act on
every scan, the cells' heater PI and salt make-up, the batch phases ending on a measured
temperature) keep the grid, and so do their scans and the sequences' decisions
(``step_event``); a tag is scanned when its block steps.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping

import numpy as np
import simpy
from simpy.core import URGENT

from .build import Line, build_line
from .electrolysis import M_TBCL3
from .kpis import ProductQuality
from .ledger import Ledger
from .salt_prep import SaltRoute, params_from_config
from .sensors import TagLayer, bind_tags
from .sequence_host import PlantEvent
from .sequences import analyser, carousel, cell_supervisor, distillation_batches
from .signals import Sample, WriteResult


class _UrgentTimeout(simpy.events.Event):
    """A timeout processed before ordinary events at the same time (physics first)."""

    def __init__(self, env: simpy.Environment, delay: float):
        super().__init__(env)
        self._ok = True
        self._value = None
        env.schedule(self, URGENT, delay)


class TwinPlant:
    """The pilot line, simulated. ``advance`` moves plant time; ``snapshot`` and ``write`` are
    what a PLC offers (tags in engineering units)."""

    def __init__(self, config, *, seed: int | None = None, epoch_s: float = 0.0,
                 start: str | None = None):
        self.config = config
        self.dt = config.simulation.sync_step_s
        self.max_dt = max(config.simulation.max_sync_step_s or self.dt, self.dt)
        self.adaptive = self.max_dt > self.dt
        #: length of the latest physics step (plant s): what a sampled PLC loop integrates over
        self.step_s = self.dt
        self.env = simpy.Environment()
        self.line: Line = build_line(config, start or config.simulation.start)
        self.flowsheet = self.line.flowsheet
        self.seed = config.simulation.seed if seed is None else seed
        rng = np.random.default_rng(self.seed)
        self.tags = TagLayer(bind_tags(config.tags, self.flowsheet), rng, epoch_s)
        self.salt = SaltRoute(params_from_config(config.salt_prep))
        self.ledger = Ledger(self.line, self.salt)
        self.quality = ProductQuality(self.line)
        self.events: list[PlantEvent] = []
        self.step_event = self.env.event()
        self.tags.scan(0.0)
        self._due: list[float] = []  # heap of the times ``after`` timeouts fall due (adaptive)
        self._streamed = self.flowsheet.joined()  # (adaptive) long steps; the rest keeps the grid
        self._gridded = tuple(n for n in self.flowsheet.order if n not in self._streamed)
        self._scanned = {group: frozenset(n for n, b in self.tags.bound.items() if b.block.name in group)
                         for group in (self._streamed, self._gridded)}
        self.env.process(self._physics_adaptive() if self.adaptive else self._physics())
        self.env.process(carousel(self))
        for cell in self.line.cells:
            self.env.process(cell_supervisor(self, cell))
        self.env.process(distillation_batches(self))
        for name in self.tags.analyser_tags:
            self.env.process(analyser(self, name))

    # -- clock ---------------------------------------------------------------------------
    @property
    def t(self) -> float:
        return float(self.env.now)

    def after(self, delay_s: float) -> simpy.Timeout:
        """A timeout rounded up to the synchronisation grid."""
        steps = max(1, math.ceil(delay_s / self.dt - 1e-9))
        if self.adaptive:
            heapq.heappush(self._due, self.env.now + steps * self.dt)
        return self.env.timeout(steps * self.dt)

    def advance(self, dt_s: float, *, sync: bool = True) -> None:
        """Run the plant for ``dt_s`` plant seconds (CPU-bound). With the adaptive step and
        ``sync=False`` the state may be left at the latest step before the target."""
        if dt_s < 0:
            raise ValueError("cannot advance by a negative time")
        target = self.env.now + dt_s
        self.env.run(until=target)
        while self.env.peek() <= target:  # and everything due at the target time itself
            self.env.step()
        if sync:
            self.sync()
            while self.env.peek() <= target:  # the sequences acting on that step
                self.env.step()

    def sync(self) -> None:
        """Bring every block's state up to the clock (adaptive step; a no-op on the grid)."""
        if self.adaptive:
            self._catch_up(streams=True)

    def _physics(self):
        while True:
            yield _UrgentTimeout(self.env, self.dt)
            self._step_streams(self.dt, None)
            self.tags.scan(self.t)
            self._signal_step()

    def _physics_adaptive(self):
        t_of = self.flowsheet.t_of
        while True:
            yield _UrgentTimeout(self.env, self.dt)
            now = self.env.now + 1e-9
            due = bool(self._due) and self._due[0] <= now
            while self._due and self._due[0] <= now:
                heapq.heappop(self._due)
            if self._streamed:
                span = self.max_dt if self._streams_quiet() else self.dt
                self._catch_up(streams=due or now - t_of[self._streamed[0]] >= span)
            else:
                self._catch_up(streams=False)

    def _streams_quiet(self) -> bool:
        """No transient in the stream-joined blocks: each of their Rosenbrock-W integrators (which
        keep W and its LU while the step size holds) would take a long step in at most two equal
        substeps (its step size h ≥ max_sync_step_s / 2). During a transient (after a carousel
        switch the cascade's h falls to about a minute) a long step would cost more substeps and
        factorisations than the grid's steps, each of one substep at one α."""
        for name in self._streamed:
            stepper = self.flowsheet.blocks[name].stepper
            if stepper.tableau.w_method and stepper.h is not None and stepper.h < 0.5 * self.max_dt:
                return False
        return True

    def _catch_up(self, *, streams: bool) -> None:
        """Step the grid's blocks, and the stream-joined ones if ``streams``, from their own time
        to the clock (adaptive step); scan what stepped; a step of the grid's blocks wakes the
        sequences."""
        now, t_of = self.env.now, self.flowsheet.t_of
        grid_dt = now - t_of[self._gridded[0]] if self._gridded else 0.0
        stream_dt = now - t_of[self._streamed[0]] if streams and self._streamed else 0.0
        grid, streams = grid_dt > 1e-9, stream_dt > 1e-9
        if grid:
            self.step_s = grid_dt
            self._supply_salt()
        if streams:
            self._step_streams(stream_dt, self._streamed)
        if grid:
            self.flowsheet.step(grid_dt, self._gridded)
        if grid or streams:
            self.tags.scan(self.t, None if grid and streams else self._scanned[self._gridded if grid else self._streamed])
        if grid or (streams and not self._gridded):
            self._signal_step()

    def _step_streams(self, dt: float, names: tuple[str, ...] | None) -> None:
        """A step of ``dt`` of the blocks ``names`` (None: all, with the salt make-up) and the
        accounts of the streams over it: feed, salt route, upsets, product quality."""
        if names is None:
            self._supply_salt()
        self.ledger.before_step(dt)
        tb = self.line.species.index("Tb")
        tb0 = self.ledger.stream(self.line.extraction, "raffinate")[tb]
        self.flowsheet.step(dt, names)
        self.salt.feed(self.ledger.stream(self.line.extraction, "raffinate")[tb] - tb0, dt)
        self.ledger.after_step(dt)
        self.quality.after_step(dt)

    def _signal_step(self) -> None:
        """The sequences waiting for a step (and its scan) run now. With the stream-joined blocks
        behind the clock, what they act on is checked right after they ran (``_apply_from_now``)."""
        done, self.step_event = self.step_event, self.env.event()
        done.succeed()
        if self.adaptive and self._streamed and self.flowsheet.t_of[self._streamed[0]] < self.env.now - 1e-9:
            held = [(b, b.u.copy(), b.p, b.unit) for b in (self.flowsheet.blocks[n] for n in self._streamed)]
            check = self.env.event()  # processed after the step event's callbacks: after the sequences
            check.callbacks.append(lambda _event: self._apply_from_now(held))
            check.succeed()

    def _apply_from_now(self, held) -> None:
        """A sequence or a malfunction changed a stream-joined block (inputs, parameters, model)
        while it was behind the clock: bring it up to now with what it had, then apply the change."""
        if all(b.p is p and b.unit is unit and np.array_equal(b.u, u) for b, u, p, unit in held):
            return
        new = [(b, b.u.copy(), b.p, b.unit) for b, _, _, _ in held]
        for b, u, p, unit in held:
            b.u[:], b.p, b.unit = u, p, unit
        self._catch_up(streams=True)
        for b, u, p, unit in new:
            b.u[:], b.p, b.unit = u, p, unit
            b.refresh(self.t)

    def _supply_salt(self) -> None:
        status = self.salt.supply(self.flowsheet.blocks, self.line.cells, self.step_s)
        if status is not None:
            kg = self.salt.store * M_TBCL3
            text = {"empty": "TbCl3 store empty: salt make-up stopped",
                    "low": f"TbCl3 store low: {kg:.1f} kg left", "ok": f"TbCl3 store restocked: {kg:.1f} kg"}
            self.log("salt_store", text[status])

    # -- PLC face ------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Sample]:
        return self.tags.snapshot()

    def write(self, values: Mapping[str, float]) -> WriteResult:
        self.sync()  # (adaptive step) what was held so far applies up to now, the write from now on
        return self.tags.write(values)

    def unit_of(self, tag_name: str) -> str:
        return self.tags.bound[tag_name].tag.plant_unit

    def signal(self, name: str) -> float:
        """A twin signal (SI), measured or not: for plots, KPIs and tests."""
        return self.flowsheet.get(name)

    def log(self, unit: str, text: str) -> None:
        self.events.append(PlantEvent(self.t, unit, text))

    # -- results -------------------------------------------------------------------------
    def stage_profile(self) -> dict[str, np.ndarray]:
        """Aqueous and organic Dy/Tb along the cascade (mol/m3, flowsheet order)."""
        sx = self.flowsheet.blocks[self.line.extraction]
        n = self.line.n_stages
        out = {}
        for phase in ("aq", "org"):
            for sp in ("Dy", "Tb"):
                out[f"{phase}.{sp}"] = np.array(
                    [sx.y[sx.output_index[f"stage{k}.{phase}.{sp}"]] for k in range(1, n + 1)])
        return out

    def mass_balance(self) -> dict[str, float]:
        return self.ledger.balance_error()

    def species(self) -> tuple[str, ...]:
        return self.line.species
