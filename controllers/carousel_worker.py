"""The worker the carousel's slow work runs in, and when its results are applied.

Public API::

    Apply = Literal["inline", "next_tick", "worker"]
    make_executor(worker: "thread" | "process", nice=10) -> concurrent.futures.Executor   # one worker
    Inline()                                        # an executor that runs a job at once
    JobQueue(executor, apply).submit(job, fn, *args) / .finished(wait) / .busy(kind) / .cancel()
    DeferredMpc(mpc, executor, apply).step(estimate, snapshot, t, *, applied) -> MpcResult
    blas_limit(threads) -> threadpoolctl limiter or None

When a result is applied (``apply``):

- ``"inline"``: in the tick that submitted it (the job runs at once; the tick waits for it);
- ``"next_tick"``: at the start of the next tick, waiting for it if it has not finished: the same
  snapshots give the same results whatever the machine (virtual-clock runs, training replays);
- ``"worker"``: at the first tick after it finished; the tick never waits (live).

Thread or process: the jobs are numpy/scipy work driven from Python (the shadow's RODAS3 steps,
banded solves of ~100 unknowns), which holds the GIL most of the time, so a worker *thread*
takes the interpreter from the control thread in 5 ms slices (``sys.getswitchinterval``); a
worker *process* does not, but each fit job carries its recorded inlet (tens of thousands of
ticks at a 1 s period) through pickling. ``benchmarks/control_cycle.py`` measures both.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import os
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from .mpc import MpcResult

log = logging.getLogger(__name__)
Apply = Literal["inline", "next_tick", "worker"]
WORKER_NICE = 10  # added to a worker process's niceness (``make_executor``)


def blas_limit(threads: int | None):
    """Limit the process's BLAS to ``threads`` threads (``threadpoolctl``); returns the limiter
    (``.restore_original_limits()``, on the thread that set it: OpenBLAS keeps the setting per
    calling thread), or None (``threads`` None, or threadpoolctl not installed)."""
    if threads is None:
        return None
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        log.info("threadpoolctl is not installed: BLAS threads left as they are")
        return None
    return threadpool_limits(limits=threads, user_api="blas")


def _start_worker(threads: int | None, nice: int) -> None:
    """A worker process's start: its BLAS on ``threads`` threads, its priority lowered by ``nice``."""
    blas_limit(threads)
    if nice and hasattr(os, "nice"):
        os.nice(nice)


def make_executor(worker: Literal["thread", "process"], nice: int | None = None) -> Executor:
    """One worker: a thread, or a process (spawned, so the caller's threads are not forked) whose
    BLAS runs on one thread and whose CPU priority is lowered by ``nice`` (``os.nice``; 0: as the
    caller's; None: ``WORKER_NICE``): on a busy machine the kernel runs the control tick's process
    first and the slow work in the time left. A thread keeps the caller's priority: it shares the
    interpreter lock, and a worker thread descheduled while holding it would stall the tick."""
    if worker == "process":
        return ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker,
                                   initargs=(1, WORKER_NICE if nice is None else nice))
    return ThreadPoolExecutor(1, thread_name_prefix="carousel-estimator")


class Inline:
    """An executor that runs each job at once on the caller's thread."""

    def submit(self, fn, *args, **kwargs) -> Future:
        f: Future = Future()
        try:
            f.set_result(fn(*args, **kwargs))
        except Exception as exc:  # noqa: BLE001  (handed to the caller through the future, as any executor)
            f.set_exception(exc)
        return f


@dataclass
class Job:
    """A job in flight: its kind, the time its data are from, and what applying it needs."""

    kind: str
    t: float
    future: Future | None = None
    x: np.ndarray | None = None  # a fit: the shadow's state at t (the base of the catch-up)
    log: list = field(default_factory=list)  # a fit: ticks advanced since t (reset columns, t0, t1, u)
    lag_seg: object = None  # a fit: the lag segment re-simulated with it, and its ticks at t
    lag_n: int = 0


class JobQueue:
    """Jobs submitted to ``executor`` and handed back, in order, when ``apply`` says."""

    def __init__(self, executor=None, apply: Apply = "inline"):
        self.executor = executor or Inline()
        self.apply = apply
        self.jobs: list[Job] = []

    @property
    def local(self) -> bool:
        """The jobs run in this process (objects may be shared with them, not only values)."""
        return not isinstance(self.executor, ProcessPoolExecutor)

    def submit(self, job: Job, fn, *args) -> Job:
        job.future = self.executor.submit(fn, *args)
        self.jobs.append(job)
        return job

    def busy(self, kind: str) -> bool:
        return any(j.kind == kind for j in self.jobs)

    def finished(self, wait: bool) -> list[tuple[Job, object]]:
        """(job, result) of the finished jobs (``wait``: of every job, waiting for it); a failed job
        is dropped with a warning (the estimate it would have changed is kept)."""
        out = []
        for job in list(self.jobs):
            if not (wait or job.future.done()):
                continue
            self.jobs.remove(job)
            try:
                out.append((job, job.future.result()))
            except Exception as exc:  # noqa: BLE001  (any failure of the job: keep the last estimate)
                log.warning("carousel %s from t=%.0f s failed, the last estimate is kept: %s", job.kind, job.t, exc)
        return out

    def cancel(self) -> None:
        """Cancel the jobs not yet started and forget every job in flight."""
        for job in self.jobs:
            job.future.cancel()
        self.jobs.clear()


class DeferredMpc:
    """The carousel's decision (``CarouselMpc``: up to eight forecasts, 0.2–0.7 s, when no column
    stands by) run in the worker: each tick submits a solve from that tick's estimate when none
    is in flight and returns the newest landed result (``apply`` as above). ``next_tick`` waits for
    the first decision in the tick that made it (so a run starts as it did with the decision on the
    control thread); ``worker`` holds ("decision pending", MVs as in effect) until it has landed."""

    def __init__(self, mpc, executor, apply: Apply):
        self.mpc, self.queue = mpc, JobQueue(executor if apply != "inline" else None, apply)
        self.mv_names = mpc.mv_names
        self._last: MpcResult | None = None

    def __getattr__(self, name):  # the MPC's bounds and names (the guard's limits go to the real MPC)
        if name.startswith("__") or name in ("mpc", "queue", "_last"):
            raise AttributeError(name)
        return getattr(self.mpc, name)

    def step(self, estimate, snapshot, t: float, *, applied=None) -> MpcResult:
        for _, res in self.queue.finished(self.queue.apply != "worker"):
            self._last = res
        if not self.queue.busy("decision"):
            solve = functools.partial(self.mpc.step, applied=dict(applied or {}))
            self.queue.submit(Job("decision", t), solve, estimate, dict(snapshot), t)
            if self.queue.apply == "inline" or (self._last is None and self.queue.apply == "next_tick"):
                for _, res in self.queue.finished(True):  # next_tick: the first decision in its own tick
                    self._last = res
        if self._last is None:
            u = self.mpc.u_now(snapshot, applied or {})
            return MpcResult(t, self.mpc.unit, "held", "decision pending (first solve in the worker)",
                             dict(zip(self.mv_names, map(float, u))), {}, float("nan"), 0, 0.0, 0.0)
        return self._last

    def cancel(self) -> None:
        self.queue.cancel()
