"""What-if runs of the live loop's estimate: the worker pool beside ``pilot run``, and the outputs.

``WhatIfService`` is what ``pilot run`` (and a served training session, through the same
``run_live``) hands to its operator server: ``request(text, user)`` forks the loop's latest tick
(``controllers.whatif.fork_state``: every unit's estimate, the writable tags, the modes), submits
``controllers.whatif.run_whatif`` to a process pool (``spawn``; one worker by default) and answers at
once with a result id; ``result(id)`` answers ``pending``, the result JSON, or ``error: ...``. The
control tick never waits: the fork copies a few frozen values, the simulation runs in another
process.

``write_outputs(result, out_dir)``: ``whatif.json`` (everything), ``trajectories.csv``,
``whatif.png`` (each KPI over the horizon, base with its ±2σ band from the estimators, every case)
and the differences table (``differences``, shown with rich by ``pilot whatif``).
"""

from __future__ import annotations

import csv
import itertools
import json
import logging
import multiprocessing
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from pydantic import ValidationError

from controllers.whatif import WhatIfRequest, fork_state, run_whatif

log = logging.getLogger(__name__)
PENDING = "pending"
MAX_KEPT = 32  # results kept per run (oldest dropped)


def request_error(exc: ValidationError) -> str:
    """One line: the request's field and what is allowed."""
    e = exc.errors()[0]
    where = ".".join(str(p) for p in e["loc"]) or "request"
    return f"what-if request field {where}: {e['msg']}"


class WhatIfService:
    """Forks of the running loop, simulated in a process pool (see the module docstring).

    ``state``: coroutine giving (the latest ``TickResult`` or None, its snapshot, the modes)."""

    def __init__(self, config, state: Callable[[], Awaitable[tuple]], *, workers: int = 1):
        self.config = config
        self.state = state
        self.writable = [t.name for t in config.tags if t.writable]
        self._pool: ProcessPoolExecutor | None = None
        self.workers = workers
        self._jobs: dict[str, Future] = {}
        self._ids = itertools.count(1)

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
        return self._pool

    async def request(self, text: str, user: str = "") -> str:
        """``ok: <id>`` once submitted, else ``error: <why>`` (bad request, no tick yet)."""
        try:
            req = WhatIfRequest.model_validate_json(text or "{}")
        except ValidationError as exc:
            return f"error: {request_error(exc)}"
        tick, snapshot, modes = await self.state()
        if tick is None:
            return "error: the control loop has not ticked yet: no estimate to fork"
        state = fork_state(tick, snapshot, modes, self.writable)
        jid = f"whatif-{next(self._ids)}"
        try:
            self._jobs[jid] = self._executor().submit(run_whatif, self.config, state, req.model_dump())
        except BrokenProcessPool:  # a worker died (killed, out of memory): a new pool, once
            self._pool = None
            self._jobs[jid] = self._executor().submit(run_whatif, self.config, state, req.model_dump())
        while len(self._jobs) > MAX_KEPT:
            self._jobs.pop(next(iter(self._jobs)))
        log.info("what-if %s by %s from t=%.0f: %d case(s), %.0f s", jid, user or "anonymous", state.t,
                 len(req.cases) + 1, req.horizon_s)
        return f"ok: {jid}"

    def result(self, jid: str) -> str:
        job = self._jobs.get(jid)
        if job is None:
            return f"error: no what-if {jid!r} (ids: {', '.join(self._jobs) or 'none yet'})"
        if not job.done():
            return PENDING
        exc = job.exception()
        if exc is not None:
            return f"error: what-if {jid} failed: {exc}"
        return json.dumps(job.result())

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


# -- outputs ------------------------------------------------------------------------------------
def differences(result: dict) -> list[dict]:
    """Per case and KPI: the base's and the case's final values, Δ final, mean Δ, largest |Δ|;
    alarms raised in the case and in the base."""
    base = result["cases"][0]
    rows = []
    for case in result["cases"][1:]:
        for k in result["kpis"]:
            b, c = base["kpis"][k], case["kpis"][k]
            d = [y - x for x, y in zip(b, c)]
            rows.append({"case": case["name"], "kpi": k, "unit": result["units"].get(k, ""), "base_final": b[-1],
                         "case_final": c[-1], "delta_final": d[-1], "delta_mean": sum(d) / len(d),
                         "delta_max_abs": max(abs(v) for v in d), "linear": case["linear"].get(k)})
    return rows


def alarm_counts(result: dict) -> dict[str, int]:
    """Per case: the alarms raised that were not standing live at the fork."""
    return {c["name"]: len(c.get("new_alarms", c["alarms_raised"])) for c in result["cases"]}


def write_outputs(result: dict, out_dir: Path) -> dict[str, Path]:
    """whatif.json, trajectories.csv and whatif.png in ``out_dir``; returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "whatif.json", "csv": out_dir / "trajectories.csv", "png": out_dir / "whatif.png"}
    paths["json"].write_text(json.dumps(result, indent=2))
    with paths["csv"].open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["case", "t_h", *result["kpis"], "active_alarms"])
        for case in result["cases"]:
            for i, t in enumerate(case["times_s"]):
                w.writerow([case["name"], f"{(t - case['times_s'][0]) / 3600:.4f}",
                            *(f"{case['kpis'][k][i]:.6g}" for k in result["kpis"]), case["active_alarms"][i]])
    plot(result, paths["png"])
    return paths


TITLES = {"SX.TB_PURITY": "Tb purity of the SX product", "SX.DY_RECOVERY": "Dy recovery to the strip liquor",
          "CE": "current efficiency", "SALT_TB": "Tb in the salt"}


def _title(kpi: str) -> str:
    what = TITLES.get(kpi) or TITLES.get(kpi.rsplit(".", 1)[-1], "")
    return f"{kpi}: {what}" if what else kpi


def _band(y: list[float], sigma: list[float], unit: str) -> tuple[list[float], list[float]]:
    """base ± 2σ, within 0..100 for percentages."""
    lo, hi = [a - 2 * s for a, s in zip(y, sigma)], [a + 2 * s for a, s in zip(y, sigma)]
    if unit in ("%", "wt%"):
        lo, hi = [max(v, 0.0) for v in lo], [min(v, 100.0) for v in hi]
    return lo, hi


def plot(result: dict, path: Path) -> None:
    """One panel per KPI (its unit on the axis) and the active alarms, hours from the fork on x;
    the base with its ±2σ band from the estimators."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = result["kpis"]
    nrow = (len(names) + 2) // 2
    fig, axes = plt.subplots(nrow, 2, figsize=(11, 2.6 * nrow + 0.6), sharex=True, squeeze=False)
    base = result["cases"][0]
    hours = {c["name"]: [(t - c["times_s"][0]) / 3600 for t in c["times_s"]] for c in result["cases"]}
    for ax, k in zip(axes.flat, names):
        unit = result["units"].get(k, "")
        for case in result["cases"]:
            ax.plot(hours[case["name"]], case["kpis"][k], label=case["name"], lw=1.6 if case is base else 1.2)
        if base["sigma"].get(k):
            ax.fill_between(hours["base"], *_band(base["kpis"][k], base["sigma"][k], unit), alpha=0.15,
                            color="C0", label="base ±2σ (estimators)")
        ax.set_title(_title(k), fontsize=9)
        ax.set_ylabel(unit)
        ax.grid(alpha=0.3)
    ax = axes.flat[len(names)]
    for case in result["cases"]:
        ax.step(hours[case["name"]], case["active_alarms"], where="post", label=case["name"])
    ax.set_title("alarms standing (raised or unacknowledged)", fontsize=9)
    ax.set_ylabel("alarms (count)")
    ax.grid(alpha=0.3)
    for ax in axes.flat[len(names) + 1:]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("hours from the fork (h)")
    axes.flat[0].legend(fontsize=7, loc="best")
    fig.suptitle(f"what-if from the live estimate, {result['horizon_s'] / 3600:g} h", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
