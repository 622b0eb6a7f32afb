"""The plots a process engineer looks at first after a run (PNG, from the recorded history).

- adsorption.png: outlet Dy+Tb of every column and the lag breakthrough, with carousel switches;
- cascade_profile.png: aqueous and organic Dy/Tb along the cascade at several times;
- cells.png: voltage, current and temperature of every electrolysis cell;
- purity.png: Tb product purity (REO basis) and Dy purity over time.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .historian.sqlite import history_path, read_series  # noqa: E402

log = logging.getLogger(__name__)


def _tags_by_signal(config, pattern: str) -> list[tuple[str, str, re.Match]]:
    """Measured tags (sensors, analysers) whose twin signal matches ``pattern``."""
    rx = re.compile(pattern)
    out = []
    for tag in config.tags:
        m = rx.fullmatch(tag.signal)
        if m and tag.kind in ("sensor", "analyser"):
            out.append((tag.name, tag.unit, m))
    return out


def _series(db: Path, tag: str):
    s = read_series(db, tag)
    return s.time_s / 3600.0, s.value


def _switch_lines(ax, events) -> None:
    for e in events:
        if "switch" in e.text:
            ax.axvline(e.t / 3600.0, color="0.6", lw=0.8, ls=":")


def _switch_readings(ax, t, v, events, delay_s: float) -> None:
    """At each carousel switch, the analyser reading it acted on: the latest sample taken at
    least the analyser delay before the switch (the PLC switches when the result arrives)."""
    pts = []
    for e in events:
        if "carousel switch" in e.text:
            k = int(np.searchsorted(t, (e.t - delay_s) / 3600.0 + 1e-9)) - 1
            if k >= 0:
                pts.append((t[k], v[k]))
    if pts:
        ts, vs = zip(*pts)
        ax.plot(ts, vs, "v", color="k", ms=6, label="reading the switch acted on")


def plot_adsorption(db: Path, config, events, path: Path) -> Path:
    fig, axes = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True)
    for name, unit, m in _tags_by_signal(config, r"adsorption\.(col\d+)\.outlet\.(Dy|Tb)"):
        t, v = _series(db, name)
        axes[0].semilogy(t, np.maximum(v, 1e-2), label=f"{m.group(1)} {m.group(2)} ({unit})", lw=1)
    axes[0].set_ylim(bottom=1e-2)
    axes[0].set_ylabel("outlet (log): fronts and elution peaks")
    for name, unit, _ in _tags_by_signal(config, r"adsorption\.lag_breakthrough"):
        t, v = _series(db, name)
        axes[1].plot(t, v, color="C3", label=f"lag outlet Dy+Tb, C/C0 ({unit})")
        limit = config.adsorption.breakthrough_limit_fraction
        scale, off = config.tag(name).conversion()
        axes[1].axhline(scale * limit + off, color="k", ls="--", lw=0.8, label=f"switch limit ({unit})")
        _switch_readings(axes[1], t, v, events, config.tag(name).delay_s)
    axes[1].set_ylabel("lag outlet C/C0")
    for ax in axes:
        _switch_lines(ax, events)
        ax.legend(fontsize=7, ncol=2)
        ax.grid(alpha=0.3)
    axes[0].set_title("Adsorption carousel: column outlets (dotted: carousel switches)")
    axes[1].set_xlabel("plant time (h)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_profiles(profiles, config, path: Path) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    st = config.extraction.stages
    bounds = [st.extraction + 0.5, st.extraction + st.scrub + 0.5]
    shades = np.linspace(0.35, 1.0, len(profiles))
    for (t, prof), shade in zip(profiles, shades):
        k = np.arange(1, len(prof["aq.Dy"]) + 1)
        last = shade == shades[-1]
        for ax, phase in zip(axes, ("aq", "org")):
            ax.semilogy(k, np.maximum(prof[f"{phase}.Dy"], 1e-9), "-", color=plt.cm.Blues(shade),
                        label=f"Dy {t / 3600:.0f} h" if last or shade == shades[0] else None)
            ax.semilogy(k, np.maximum(prof[f"{phase}.Tb"], 1e-9), "--", color=plt.cm.Oranges(shade),
                        label=f"Tb {t / 3600:.0f} h" if last or shade == shades[0] else None)
    for ax, phase in zip(axes, ("aqueous", "organic")):
        for b in bounds:
            ax.axvline(b, color="0.5", lw=0.8)
        ax.set_title(f"{phase} phase (darker = later)")
        ax.set_xlabel("stage (extraction | scrub | strip)")
        ax.set_ylabel("mol/m3")
        ax.grid(alpha=0.3, which="both")
    axes[1].legend(fontsize=7, ncol=2)
    fig.suptitle(f"Dy/Tb stage profiles ({config.extraction.contactor})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_cells(db: Path, config, path: Path) -> Path:
    fig, axes = plt.subplots(3, 1, figsize=(9, 7.5), sharex=True)
    for ax, what in zip(axes, ("voltage", "current", "temperature")):
        for name, unit, m in _tags_by_signal(config, rf"([A-Za-z0-9_]+)\.{what}"):
            if m.group(1) in {c.name for c in config.electrolysis.cells}:
                t, v = _series(db, name)
                ax.plot(t, v, label=f"{m.group(1)} ({unit})", lw=1)
        ax.set_ylabel(what)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    axes[0].set_title("Molten-salt electrolysis cells")
    axes[-1].set_xlabel("plant time (h)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_purity(db: Path, config, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(9, 4))
    for name, unit, m in _tags_by_signal(config, r"extraction\.(tb_purity|dy_purity)"):
        t, v = _series(db, name)
        ax.plot(t, v, label=f"{m.group(1).replace('_', ' ')} ({unit})")
    ax.axhline(99.5, color="k", ls="--", lw=0.8, label="Tb spec 99.5 %")
    ax.set_xlabel("plant time (h)")
    ax.set_ylabel("purity, REO basis")
    ax.set_title("Product purity")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def make_plots(out_dir: Path, config, profiles, events) -> tuple[tuple[Path, ...], tuple[str, ...]]:
    """Every plot of the run: (the PNGs drawn, one line for each that could not be). A plot that
    fails (a tag missing from the history, a full disk, a drawing error) is closed and skipped; the
    others are still drawn."""
    db = history_path(out_dir)
    jobs = (("adsorption.png", lambda p: plot_adsorption(db, config, events, p)),
            ("cascade_profile.png", lambda p: plot_profiles(profiles, config, p)),
            ("cells.png", lambda p: plot_cells(db, config, p)),
            ("purity.png", lambda p: plot_purity(db, config, p)))
    drawn, errors = [], []
    for name, draw in jobs:
        try:
            drawn.append(draw(out_dir / name))
        except Exception as exc:  # noqa: BLE001  (any failure of one plot: named, the rest drawn)
            plt.close("all")
            log.debug("plot %s failed", name, exc_info=True)
            errors.append(f"{out_dir / name}: not drawn ({type(exc).__name__}: {exc})")
    return tuple(drawn), tuple(errors)
