"""``pilot sweep SPEC.yaml``: run a grid, Latin hypercube or list of scenarios on Dask.

A LocalCluster of ``--workers`` processes by default; ``--scheduler tcp://host:8786`` for a running
``dask scheduler`` whose ``dask worker`` processes (any host with pilot-line installed) run the
scenarios. Rows arrive as scenarios finish; with ``--out DIR`` they are kept, and a sweep run again
into the same folder runs only what is not finished (see ``pilot.sweep``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from .cli_common import fail

err = Console(stderr=True)
out = Console()


def sweep_cmd(
    spec: Annotated[Path, typer.Argument(help="sweep file (YAML: config, until, control, and one of "
                                              "grid / lhs / scenarios; docs/sweeps.md)")],
    out_dir: Annotated[Path, typer.Option("--out", help="folder for results, plots and the finished "
                                                        "scenarios (a rerun skips those)")] = Path("out/sweep"),
    until: Annotated[Optional[str], typer.Option(help="plant time per scenario (default: the file's, "
                                                      "else 1h): 30min, 4h")] = None,
    control: Annotated[Optional[str], typer.Option(help="off | advisory | auto for every scenario "
                                                        "(default: the file's, else auto)")] = None,
    workers: Annotated[int, typer.Option(min=1, max=256, help="LocalCluster worker processes")] = 2,
    scheduler: Annotated[Optional[str], typer.Option(help="address of a running Dask scheduler "
                                                          "(tcp://host:8786) instead of a LocalCluster")] = None,
    plots: Annotated[bool, typer.Option(help="write PNG plots")] = True,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
) -> None:
    """Run every scenario of SPEC (pilot simulate each, on Dask workers); one results table + plots.

    Writes DIR/results.parquet (results.csv without pyarrow): one row per scenario with its inputs,
    KPIs, alarm counts, balance error, wall time and error (empty if it ran), and DIR/*.png."""
    from .sweep import dask_client, plot_sweep, run_sweep, write_table
    from .sweep_spec import SweepError, load_sweep

    if scheduler is not None and not scheduler.startswith(("tcp://", "tls://", "inproc://", "ucx://")):
        fail(f"--scheduler must be an address like tcp://host:8786 (got {scheduler!r})")
    try:
        scenarios = load_sweep(spec, until=until, control=control)
    except SweepError as exc:
        fail(str(exc))
    failed = []
    with Progress(TextColumn("[bold]sweep"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[last]}"),
                  TimeElapsedColumn(), console=err, disable=quiet) as bar:
        task = bar.add_task("sweep", total=len(scenarios), last="")

        def progress(row: dict, resumed: bool) -> None:
            if row.get("error"):
                failed.append(row)
            state = "kept" if resumed else ("FAILED" if row.get("error") else "done")
            bar.update(task, advance=1, last=f"{state}: {row['scenario']}")

        try:
            with dask_client(workers, scheduler) as client:
                rows = run_sweep(scenarios, client, out_dir=out_dir, progress=progress)
        except OSError as exc:
            fail(f"cannot reach the Dask scheduler {scheduler or '(LocalCluster)'} or write {out_dir}: {exc}")
    table = write_table(rows, out_dir)
    out.print(f"{len(rows)} scenarios, {len(failed)} failed; table: {table}")
    for row in failed:
        out.print(f"[red]failed[/] {row['scenario']}: {row['error']}", highlight=False)
    if plots:
        for p in plot_sweep(rows, scenarios, out_dir):
            out.print(f"plot:  {p}")
    if failed:
        raise typer.Exit(1)
