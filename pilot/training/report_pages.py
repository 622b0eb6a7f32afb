"""The training record drawn with matplotlib: A4 pages (``report.pdf``, matplotlib's PDF backend) and
the trends. The pages carry what ``report.html`` carries, in the same order and units (session
time in min:s): the record, the score and the responses; the alarms, spec, product and penalties;
the trends. Met / missed are coloured and marked with a text mark (legible printed in grey).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

A4_IN = (8.27, 11.69)
_LEFT, _WIDTH, _BOTTOM = 0.07, 0.86, 0.05
_LINE = 0.0145  # height of one table text line, fraction of the page
_MET, _MISSED, _HEAD = "#d9f2d9", "#f7d4d4", "#e6e6e6"


def mmss(seconds: float) -> str:
    """Seconds as min:s (``75:00``, ``0:45``, ``-1:30``), rounded to the second."""
    total = int(round(abs(seconds)))
    return f"{'-' if seconds < 0 and total else ''}{total // 60}:{total % 60:02d}"


def _tick_step(span_s: float) -> float:
    return next((s for s in (60, 120, 300, 600, 900, 1800, 3600, 7200, 14400) if span_s / s <= 10), 28800)


def draw_trends(fig, scenario, score, units: dict[str, str], rect=(0.0, 0.0, 1.0, 1.0)) -> None:
    """One axis per recorded tag in ``rect`` of ``fig``; time axis in min:s of session time."""
    from matplotlib.ticker import FuncFormatter, MultipleLocator

    rec = score.record
    tags = list(rec.values) or ["(no tag recorded)"]
    t = np.array(rec.t, dtype=float)
    gs = fig.add_gridspec(len(tags), 1, left=rect[0] + 0.1, right=rect[0] + rect[2] - 0.03,
                          bottom=rect[1] + 0.07, top=rect[1] + rect[3] - 0.05, hspace=0.35)
    limits = {s.tag: s for s in scenario.spec}
    axes = [fig.add_subplot(gs[k]) for k in range(len(tags))]
    for ax, tag in zip(axes, tags):
        if tag in rec.values:
            ax.plot(t, rec.values[tag], lw=1.2, color="tab:blue")
        s = limits.get(tag)
        for lim in ((s.low, s.high) if s else ()):
            if lim is not None:
                ax.axhline(lim, color="tab:red", ls="--", lw=0.8)
        for a in score.alarms:
            ax.axvline(a.raised_t, color="tab:orange", lw=0.7, alpha=0.6)
            if a.acked_t is not None:
                ax.axvline(a.acked_t, color="tab:green", lw=0.7, alpha=0.6)
        for a in rec.actions:
            if a.kind == "write" and tag in a.args.get("values", {}) and a.by not in ("instructor", "scenario"):
                ax.plot(a.t, a.args["values"][tag], "v", color="black")
        ax.set_ylabel(f"{tag}\n{units.get(tag, '')}", fontsize=7)
        ax.tick_params(labelsize=7)
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.grid(alpha=0.3)
        ax.set_xlim(0, max(rec.t_end, 60.0))
        ax.xaxis.set_major_locator(MultipleLocator(_tick_step(rec.t_end)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: mmss(x)))
    axes[-1].set_xlabel("session time, min:s (orange: alarm raised, green: acknowledged, ▼: trainee write, "
                        "dashed red: spec)", fontsize=7)
    fig.text(rect[0] + 0.5 * rect[2], rect[1] + rect[3] - 0.015, f"{scenario.title}: score {score.score:.0f}/100",
             ha="center", va="top", fontsize=10)


class _Pages:
    """A4 pages filled top-down: headings, paragraphs and tables (split across pages when long)."""

    def __init__(self, plt):
        self.plt, self.figs, self.y = plt, [], 0.0
        self.new_page()

    def new_page(self) -> None:
        self.figs.append(self.plt.figure(figsize=A4_IN))
        self.y = 0.95

    @property
    def fig(self):
        return self.figs[-1]

    def text(self, s: str, size: float = 8.5, weight: str = "normal", width: int = 110) -> None:
        lines = textwrap.fill(s, width).count("\n") + 1 if s else 0
        h = lines * size / 8.5 * _LINE + 0.008
        if self.y - h < _BOTTOM:
            self.new_page()
        self.fig.text(_LEFT, self.y, textwrap.fill(s, width), fontsize=size, weight=weight, va="top")
        self.y -= h

    def table(self, header: list[str], rows: list[list[str]], widths: list[float], colours=None) -> None:
        """``widths``: fractions of the text width; ``colours``: {(row, col): face colour}."""
        chars = [max(8, int(w * 105)) for w in widths]
        wrap = [[textwrap.fill(str(c), n) for c, n in zip(r, chars)] for r in [header] + rows]
        lines = [max(c.count("\n") + 1 for c in r) for r in wrap]
        i = 1
        while True:
            room = (self.y - _BOTTOM) / _LINE - lines[0]
            j = i
            while j < len(wrap) and sum(lines[i:j + 1]) <= room:
                j += 1
            if j == i < len(wrap) and self.y < 0.9:  # not one row fits here: next page
                self.new_page()
                continue
            j = max(j, min(i + 1, len(wrap)))  # at least one row, however tall, on a fresh page
            self._draw([wrap[0]] + wrap[i:j], [lines[0]] + lines[i:j], widths, colours, i)
            if j >= len(wrap):
                return
            i = j
            self.new_page()

    def _draw(self, cells, lines, widths, colours, first) -> None:
        h = sum(lines) * _LINE
        ax = self.fig.add_axes((_LEFT, self.y - h, _WIDTH, h))
        ax.axis("off")
        tab = ax.table(cellText=cells, colWidths=widths, cellLoc="left", loc="upper left", bbox=(0, 0, 1, 1))
        tab.auto_set_font_size(False)
        for (r, c), cell in tab.get_celld().items():
            cell.set_height(lines[r] / sum(lines))
            cell.set_linewidth(0.4)
            cell.PAD = 0.012 / widths[c]  # the same padding in every column
            cell.get_text().set_fontsize(7.5)
            cell.get_text().set_verticalalignment("center")
            if r == 0:
                cell.set_facecolor(_HEAD)
                cell.get_text().set_weight("bold")
            elif colours and (first + r - 2, c) in colours:
                cell.set_facecolor(colours[(first + r - 2, c)])
        self.y -= h + 0.02


def record_pages(scenario, score, units: dict[str, str], record_lines: list[tuple[str, str]]) -> list:
    """The record as matplotlib figures, one per A4 page (the caller closes them)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rec, p = score.record, _Pages(plt)
    p.text(f"Training record: {scenario.title}", size=14, weight="bold", width=70)
    p.table(["record", "value"], [list(x) for x in record_lines], [0.22, 0.78])
    p.text(f"Score: {score.score:.0f} / 100", size=16, weight="bold")
    p.text(scenario.teaches, size=8)
    p.text("Expected responses", size=11, weight="bold")
    p.table(["response", "result", "time to act, min:s", "points", "why missed"],
            [[x.text, "✔ met" if x.met else "✘ missed", "—" if x.time_to_act_s is None else mmss(x.time_to_act_s),
              f"{x.points:g}", x.note or "—"] for x in score.responses],
            [0.44, 0.1, 0.14, 0.08, 0.24],
            {(i, 1): _MET if x.met else _MISSED for i, x in enumerate(score.responses)})
    p.new_page()
    p.text("Alarms", size=11, weight="bold")
    if score.alarms:
        p.table(["alarm", "raised, min:s", "acknowledged, min:s", "time to ack., min:s", "by", "stood unack., min:s"],
                [[a.alarm_id, mmss(a.raised_t), "—" if a.acked_t is None else mmss(a.acked_t),
                  "—" if a.acked_t is None else mmss(a.acked_t - a.raised_t), a.operator or "—",
                  mmss(a.standing_s(rec.t_end)) + (" ✘ still unack." if a.unacknowledged else "")]
                 for a in score.alarms], [0.24, 0.1, 0.14, 0.12, 0.18, 0.22],
                {(i, 5): _MISSED for i, a in enumerate(score.alarms) if a.unacknowledged})
    else:
        p.text("No alarm was raised.")
    p.text("Spec and product", size=11, weight="bold")
    if score.out_of_spec_s:
        p.table(["tag", "time out of spec, min:s"], [[k, mmss(v)] for k, v in score.out_of_spec_s.items()], [0.6, 0.4])
    p.text(f"Tb product made in the session: {score.product_kg * 1000:.2f} g, of which off spec (purity below "
           f"{scenario.off_spec.tb_purity_min_percent:g} %): {score.off_spec_kg * 1000:.2f} g "
           f"({100 * score.off_spec_fraction:.0f} %).")
    p.text("Penalties", size=11, weight="bold")
    p.table(["penalty", "points"], [[k, f"−{v:.1f}"] for k, v in score.penalties.items()], [0.7, 0.3])
    p.new_page()
    draw_trends(p.fig, scenario, score, units, rect=(0.0, 0.04, 1.0, 0.92))
    return p.figs


def write_pdf(path: Path, scenario, score, units: dict[str, str], record_lines) -> Path:
    import matplotlib.pyplot as plt
    from matplotlib.backends.backend_pdf import PdfPages

    figs = record_pages(scenario, score, units, record_lines)
    with PdfPages(path, metadata={"Title": f"Training record: {scenario.title}",
                                  "Subject": f"{score.record.session_id}, trainee {score.record.trainee or '—'}"}) as pdf:
        for f in figs:
            pdf.savefig(f)
            plt.close(f)
    return path


def write_page_image(path: Path, scenario, score, units: dict[str, str], record_lines,
                     pages: tuple[int, ...] = (0, 1, 2), dpi: int = 60) -> Path:
    """Pages of the record side by side in one PNG (the picture of a report in the docs)."""
    import matplotlib.pyplot as plt

    figs = record_pages(scenario, score, units, record_lines)
    images = []
    for k, f in enumerate(figs):
        if k in pages:
            f.set_dpi(dpi)
            f.canvas.draw()
            images.append(np.asarray(f.canvas.buffer_rgba())[..., :3])
        plt.close(f)
    gap = np.full((images[0].shape[0], 12, 3), 200, dtype=np.uint8)
    plt.imsave(path, np.hstack([x for im in images for x in (im, gap)][:-1]))
    return path
