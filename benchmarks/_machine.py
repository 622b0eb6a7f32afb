"""The machine a benchmark runs on: BLAS threads, load, and the core count it claims.

Import this module before numpy (``from benchmarks import _machine`` or ``import _machine`` at
the top of a benchmark): :func:`one_blas_thread` sets ``OPENBLAS_NUM_THREADS``,
``OMP_NUM_THREADS``, ``MKL_NUM_THREADS`` and the rest to 1 at import, before any maths library
loads, so a "one core" figure is not a second core spinning in a BLAS worker thread.

:func:`claim` checks that the process can use the cores a benchmark claims (its CPU affinity,
``os.sched_getaffinity``, or ``os.cpu_count``) and refuses with exit code 2 when fewer are
available, unless ``--allow-fewer-cores`` was given, in which case it prints a loud warning.
:func:`load_line` is the line every benchmark prints beside its figures: the 1/5/15-minute load
average (``os.getloadavg``), the cores it uses and the cores of the machine, and whether the
machine was shared (1-minute load, this benchmark included, above the machine's cores).
"""

from __future__ import annotations

import os
import sys

BLAS_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
             "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


def one_blas_thread(environ=os.environ) -> None:
    """One thread in every maths library that reads these variables at load (before numpy)."""
    for name in BLAS_VARS:
        environ[name] = "1"


one_blas_thread()


def available_cores() -> int:
    """Cores this process may run on (its affinity where the OS has one, else the CPU count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def check_cores(claimed: int, available: int, *, allow_fewer: bool) -> str | None:
    """None when ``available >= claimed``; else the warning to print (allowed) or raise (refused)."""
    if available >= claimed:
        return None
    text = (f"this benchmark claims {claimed} core(s) but only {available} are available; "
            "its figures would not be what it says")
    if not allow_fewer:
        raise SystemExit(f"REFUSED: {text} (run on a machine with {claimed} free cores, "
                         "or pass --allow-fewer-cores to measure anyway)")
    return f"WARNING: {text}: measuring anyway (--allow-fewer-cores)"


def claim(claimed: int, *, allow_fewer: bool = False) -> int:
    """Enforce the claimed core count (exit 2 or a loud warning on stderr); returns it."""
    try:
        warning = check_cores(claimed, available_cores(), allow_fewer=allow_fewer)
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(2) from None
    if warning:
        print("!" * 78, warning, "!" * 78, sep="\n", file=sys.stderr)
    return claimed


def pin_to_one_core() -> None:
    """Run this process on one core (the lowest it may use), where the OS allows it."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def load_line(cores_used: int) -> str:
    """``machine: load 1/5/15 min 0.12 / 0.30 / 0.25, uses 1 of 2 cores (quiet)``."""
    l1, l5, l15 = os.getloadavg()
    total = os.cpu_count() or 1
    shared = l1 > total
    state = "SHARED: other processes were running, figures are lower than on an idle one" if shared \
        else "quiet"
    return (f"machine: load 1/5/15 min {l1:.2f} / {l5:.2f} / {l15:.2f}, uses {cores_used} of {total} cores, "
            f"BLAS threads {os.environ.get('OPENBLAS_NUM_THREADS', 'unset')} ({state})")


def add_arguments(parser) -> None:
    """The ``--allow-fewer-cores`` flag every benchmark takes."""
    parser.add_argument("--allow-fewer-cores", action="store_true",
                        help="measure even when fewer cores are available than the benchmark claims (warns)")
