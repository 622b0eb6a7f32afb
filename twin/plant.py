"""The SimPy plant: the flowsheet's ODEs advanced on a virtual clock, with the discrete events
a PLC and its operators add (carousel switching, batch taps, distillation batches, analyser
samples with their delay, sensor noise from a seeded generator).

Time is the SimPy clock in plant seconds. Physics advances on a fixed synchronisation grid
(``simulation.sync_step_s``); its timeouts have URGENT priority, so at every grid time the
state is brought up to date *before* any discrete event at that time looks at it, and a
decision taken at time t applies to the step [t, t + dt]. Discrete delays are rounded up to
the grid, so no event is ever applied to the past.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import simpy
from simpy.core import URGENT

from pilot_config.base import SPECIES

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
        self.env.process(self._physics())
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
        return self.env.timeout(steps * self.dt)

    def advance(self, dt_s: float) -> None:
        """Run the plant for ``dt_s`` plant seconds (CPU-bound)."""
        if dt_s < 0:
            raise ValueError("cannot advance by a negative time")
        target = self.env.now + dt_s
        self.env.run(until=target)
        while self.env.peek() <= target:  # and everything due at the target time itself
            self.env.step()

    def _physics(self):
        while True:
            yield _UrgentTimeout(self.env, self.dt)
            self._supply_salt()
            self.ledger.before_step(self.dt)
            tb0 = self.ledger.stream(self.line.extraction, "raffinate")[SPECIES.index("Tb")]
            self.flowsheet.step(self.dt)
            self.salt.feed(self.ledger.stream(self.line.extraction, "raffinate")[SPECIES.index("Tb")] - tb0, self.dt)
            self.ledger.after_step(self.dt)
            self.quality.after_step(self.dt)
            self.tags.scan(self.t)
            done, self.step_event = self.step_event, self.env.event()
            done.succeed()

    def _supply_salt(self) -> None:
        status = self.salt.supply(self.flowsheet.blocks, self.line.cells, self.dt)
        if status is not None:
            kg = self.salt.store * M_TBCL3
            text = {"empty": "TbCl3 store empty: salt make-up stopped",
                    "low": f"TbCl3 store low: {kg:.1f} kg left", "ok": f"TbCl3 store restocked: {kg:.1f} kg"}
            self.log("salt_store", text[status])

    # -- PLC face ------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Sample]:
        return self.tags.snapshot()

    def write(self, values: Mapping[str, float]) -> WriteResult:
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
        return SPECIES
