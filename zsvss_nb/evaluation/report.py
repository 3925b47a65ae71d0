"""One comparison table of methods under protocols, as Markdown, CSV, LaTeX, JSON and figures.

:class:`Comparison` holds one row per (method, protocol) with its :class:`EvalResult` and cost;
:func:`zsvss_nb.evaluation.compare.compare` makes one. Rows are grouped by protocol (numbers are
only comparable within a protocol); in each group the best value of every column is bold (highest
mIoU, mVC and pixel accuracy, lowest seconds per frame). The LaTeX table is a booktabs
``tabular`` fragment for ``\\input``; the figures are matplotlib ``Figure`` objects (no pyplot)
saved through :func:`zsvss_nb.notebook.viz.save_figure` with the config and model in their metadata.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from ..io.writers import atomic_write_json, atomic_write_text
from .evaluate import Markdown
from .metrics import EvalResult

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PROTOCOL_NAMES = {
    "first-frame": "first-frame GT",
    "hungarian": "Hungarian, per video",
    "majority": "majority, per frame",
    "hungarian-frame": "Hungarian, per frame",
    "majority-video": "majority, per video",
}


@dataclass
class ComparisonRow:
    """One method scored under one protocol; ``first_frame_gt``: the run used frame 1's GT.

    With several seeds ``result`` is the mean over ``seeds`` runs and ``std`` the spread
    (population std) of each column key; one run has no spread (``std`` empty).
    """

    method: str
    protocol: str
    first_frame_gt: bool
    result: EvalResult
    seconds_per_frame: float
    frames: int
    std: dict[str, float] = field(default_factory=dict)
    seeds: int = 1

    def value(self, key: str) -> float:
        """A column's value: "miou", "mvc<n>", "pixel_acc" (fractions) or "seconds_per_frame"."""
        if key == "seconds_per_frame":
            return self.seconds_per_frame
        if key.startswith("mvc"):
            return self.result.mvc.get(int(key[3:]), math.nan)
        return float(getattr(self.result, key))


@dataclass
class Comparison:
    """The rows of a comparison, the (method, protocol, reason) pairs that were not applicable,
    what was compared (``meta``: dataset, model, config, methods, protocols, vc_ns) and the runs
    still missing videos (a sharded run before the other shards finished)."""

    rows: list[ComparisonRow]
    skipped: list[tuple[str, str, str]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    incomplete: list[str] = field(default_factory=list)

    @property
    def vc_ns(self) -> list[int]:
        return sorted({n for r in self.rows for n in r.result.mvc})

    def columns(self) -> list[tuple[str, str, bool]]:
        """(key, header, higher is better) of the numeric columns, in order."""
        return [
            ("miou", "mIoU", True),
            *((f"mvc{n}", f"mVC{n}", True) for n in self.vc_ns),
            ("pixel_acc", "pixel acc.", True),
            ("seconds_per_frame", "s/frame", False),
        ]

    def methods(self) -> list[str]:
        """The methods of the rows, in the order they were asked for."""
        asked = [m for m in self.meta.get("methods", []) if any(r.method == m for r in self.rows)]
        return list(dict.fromkeys([*asked, *(r.method for r in self.rows)]))

    def protocols(self) -> list[str]:
        """The protocols of the rows, in row order."""
        return list(dict.fromkeys(r.protocol for r in self.rows))

    @property
    def seeds(self) -> int:
        """How many seeds the rows average (1: single runs)."""
        return max((r.seeds for r in self.rows), default=1)

    def best(self) -> set[tuple[int, str]]:
        """(row index, column key) of the best value of each column within each protocol,
        and, with seeds, of every value within the spread of the best (|difference| <= the sum
        of the two stds): those differences are not findings."""
        out = set()
        for protocol in self.protocols():
            group = [i for i, r in enumerate(self.rows) if r.protocol == protocol]
            for key, _, higher in self.columns():
                vals = {i: self.rows[i].value(key) for i in group}
                vals = {i: v for i, v in vals.items() if not math.isnan(v)}
                if vals:
                    top_i = (max if higher else min)(vals, key=vals.get)
                    top_sd = self.rows[top_i].std.get(key, 0.0)
                    out |= {
                        (i, key)
                        for i, v in vals.items()
                        if abs(v - vals[top_i]) <= top_sd + self.rows[i].std.get(key, 0.0)
                    }
        return out

    def _cells(self, i: int, pm: str = "±") -> list[str]:
        row = self.rows[i]
        cells = []
        for key, _, _ in self.columns():
            v = row.value(key)
            if math.isnan(v):
                cells.append("n/a")
            elif key == "seconds_per_frame":
                cells.append(f"{v:.2f}")
            elif key in row.std and not math.isnan(row.std[key]):
                cells.append(f"{100 * v:.1f} {pm} {100 * row.std[key]:.1f}")
            else:
                cells.append(f"{100 * v:.1f}")
        return cells

    def notes(self) -> list[str]:
        """The lines under the table: what the GT column means, the skipped pairs."""
        lines = [
            "GT = the method used the first frame's ground truth (VidSeg's protocol maps its "
            "clusters with it; propagation starts from it). Metrics in percent; s/frame is wall "
            "time of the run per frame, writing included."
        ]
        if self.seeds > 1:
            lines.append(
                f"Mean ± std over {self.seeds} seeds (noise and k-means seed); bold: the best "
                "value of a protocol and every value within the spread of it (difference <= "
                "the sum of the stds), so a difference between two bold values is not a finding."
            )
        if self.skipped:
            lines.append(
                "Not applicable: "
                + "; ".join(f"{m} under {p} ({why})" for m, p, why in self.skipped)
                + "."
            )
        return lines

    def markdown(self) -> Markdown:
        """The table as Markdown, best values of each protocol in bold, notes below."""
        head = ["method", "protocol", "GT", *(h for _, h, _ in self.columns())]
        best = self.best()
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 3 + "---:|" * len(head[3:])]
        for i, row in enumerate(self.rows):
            cells = [
                f"**{c}**" if (i, key) in best else c
                for c, (key, _, _) in zip(self._cells(i), self.columns(), strict=True)
            ]
            gt = "yes" if row.first_frame_gt else "no"
            name = PROTOCOL_NAMES.get(row.protocol, row.protocol)
            lines.append("| " + " | ".join([row.method, name, gt, *cells]) + " |")
        return Markdown("\n".join([*lines, "", *self.notes()]))

    def csv(self) -> str:
        """The rows as CSV: fractions (not percent), seconds per frame, frames and videos."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        keys = [k for k, _, _ in self.columns()]
        spread = [f"{k}_std" for k in keys if k != "seconds_per_frame"] if self.seeds > 1 else []
        writer.writerow(
            ["method", "protocol", "first_frame_gt", *keys, *spread, "frames", "videos",
             *(["seeds"] if spread else [])]
        )  # fmt: skip
        for row in self.rows:
            vals = ["" if math.isnan(row.value(k)) else f"{row.value(k):.6g}" for k in keys]
            sds = [row.std.get(k[:-4], math.nan) for k in spread]
            sds = ["" if math.isnan(v) else f"{v:.6g}" for v in sds]
            writer.writerow(
                [row.method, row.protocol, int(row.first_frame_gt), *vals, *sds, row.frames,
                 row.result.num_videos, *([row.seeds] if spread else [])]
            )  # fmt: skip
        return buf.getvalue()

    def latex(self) -> str:
        """A booktabs ``tabular`` (for ``\\input``; needs ``\\usepackage{booktabs}``)."""
        cols = self.columns()
        best = self.best()
        head = ["Method", "Protocol", "GT", *(_latex_header(h) for _, h, _ in cols)]
        lines = [
            f"% {self.caption()}",
            "\\begin{tabular}{lll" + "r" * len(cols) + "}",
            "\\toprule",
            " & ".join(head) + " \\\\",
        ]
        previous = None
        for i, row in enumerate(self.rows):
            if row.protocol != previous:
                lines.append("\\midrule")
                previous = row.protocol
            cells = [
                f"\\textbf{{{c}}}" if (i, key) in best else ("--" if c == "n/a" else c)
                for c, (key, _, _) in zip(self._cells(i, "$\\pm$"), cols, strict=True)
            ]
            name = PROTOCOL_NAMES.get(row.protocol, row.protocol)
            gt = "yes" if row.first_frame_gt else "no"
            lines.append(" & ".join([latex_escape(row.method), latex_escape(name), gt, *cells]))
            lines[-1] += " \\\\"
        lines += ["\\bottomrule", "\\end{tabular}", ""]
        return "\n".join(lines)

    def caption(self) -> str:
        """One line naming the dataset, the model and the frames compared."""
        meta = self.meta
        frames = f", first {meta['max_frames']} frames" if meta.get("max_frames") else ""
        return (
            f"{meta.get('dataset', '?')} ({meta.get('videos', '?')} videos{frames}), "
            f"model {meta.get('model', {}).get('name', '?')}"
        )

    # -- figures ---------------------------------------------------------------------------
    def bar_figure(self, metrics: Sequence[str] | None = None) -> Figure:
        """Grouped bars per method, one bar per protocol, a panel per metric (default mIoU and
        the first mVC)."""
        from matplotlib.figure import Figure

        keys = list(metrics) if metrics else ["miou", *(f"mvc{n}" for n in self.vc_ns[:1])]
        headers = {k: h for k, h, _ in self.columns()}
        methods = self.methods()
        protocols = self.protocols()
        fig = Figure(figsize=(1.0 + 0.7 * len(methods), 2.6 * len(keys)), layout="constrained")
        axes = fig.subplots(len(keys), 1, squeeze=False)[:, 0]
        width = 0.8 / max(len(protocols), 1)
        for ax, key in zip(axes, keys, strict=True):
            for j, protocol in enumerate(protocols):
                rows = {r.method: r for r in self.rows if r.protocol == protocol}
                xs = [i + (j - (len(protocols) - 1) / 2) * width for i in range(len(methods))]
                vals = [100 * rows[m].value(key) if m in rows else math.nan for m in methods]
                errs = [100 * rows[m].std.get(key, 0.0) if m in rows else 0.0 for m in methods]
                ax.bar(
                    xs, vals, width, yerr=errs if any(errs) else None, capsize=2,
                    label=PROTOCOL_NAMES.get(protocol, protocol),
                )  # fmt: skip
            ax.set_ylabel(f"{headers.get(key, key)} (%)")
            ax.set_xticks(range(len(methods)))
            ax.set_xticklabels(methods, rotation=30, ha="right")
            ax.set_ylim(0, 100)
        axes[0].legend(frameon=False, fontsize="small", title="protocol")
        fig.suptitle(self.caption(), fontsize="medium")
        return fig

    def scatter_figure(self, x: str | None = None, y: str = "miou") -> Figure:
        """Quality against consistency: y (default mIoU) over x (default the first mVC), one
        colour per method and one marker shape per protocol, with a legend for each."""
        from matplotlib.figure import Figure
        from matplotlib.lines import Line2D

        if not self.rows:
            raise ConfigError("the comparison has no rows to plot")
        x = x or f"mvc{self.vc_ns[0]}"
        headers = {k: h for k, h, _ in self.columns()}
        colours = {m: f"C{i % 10}" for i, m in enumerate(self.methods())}
        markers = {p: "osD^v"[j % 5] for j, p in enumerate(self.protocols())}
        fig = Figure(figsize=(5.6, 3.4), layout="constrained")
        ax = fig.add_subplot()
        for r in self.rows:
            ax.scatter(
                100 * r.value(x), 100 * r.value(y), c=colours[r.method],
                marker=markers[r.protocol], edgecolors="k", linewidths=0.4,
            )  # fmt: skip
        ax.set_xlabel(f"{headers.get(x, x)} (%), consistency")
        ax.set_ylabel(f"{headers.get(y, y)} (%), quality")
        handles = [
            Line2D([], [], ls="", marker="o", color=c, label=m) for m, c in colours.items()
        ] + [
            Line2D([], [], ls="", marker=mk, color="0.5", label=PROTOCOL_NAMES.get(p, p))
            for p, mk in markers.items()
        ]
        fig.legend(handles=handles, loc="outside right center", frameon=False, fontsize="small")
        fig.suptitle(self.caption(), fontsize="medium")
        return fig

    # -- files -----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Everything as plain data (the EvalResult summaries, nan as None in JSON)."""
        return {
            "meta": self.meta,
            "rows": [
                {
                    "method": r.method,
                    "protocol": r.protocol,
                    "first_frame_gt": r.first_frame_gt,
                    "seconds_per_frame": r.seconds_per_frame,
                    "frames": r.frames,
                    "std": r.std,
                    "seeds": r.seeds,
                    "result": json.loads(r.result.to_json()),
                }
                for r in self.rows
            ],
            "skipped": [list(s) for s in self.skipped],
            "incomplete": self.incomplete,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Comparison:
        """Inverse of :meth:`to_dict` (e.g. ``comparison.json``), to re-render a saved table."""
        rows = []
        for row in data["rows"]:
            r = row["result"]
            result = EvalResult(
                miou=as_float(r["miou"]),
                pixel_acc=as_float(r["pixel_acc"]),
                mvc={int(n): as_float(v) for n, v in r["mvc"].items()},
                per_class_iou=[as_float(v) for v in r["per_class_iou"]],
                protocol=r["protocol"],
                num_frames=r["num_frames"],
                num_videos=r["num_videos"],
                num_classes=r["num_classes"],
                class_names=r.get("class_names"),
            )
            spf = as_float(row["seconds_per_frame"])
            std = {k: as_float(v) for k, v in row.get("std", {}).items()}
            rows.append(
                ComparisonRow(
                    row["method"], row["protocol"], row["first_frame_gt"], result, spf,
                    row["frames"], std, int(row.get("seeds", 1)),
                )
            )  # fmt: skip
        skipped = [tuple(s) for s in data.get("skipped", [])]
        return cls(rows, skipped, data.get("meta", {}), list(data.get("incomplete", [])))

    def save(self, out: str | Path, stem: str = "comparison") -> list[Path]:
        """Write ``<stem>.md``, ``.csv``, ``.tex``, ``.json`` and the two figures (PDF and PNG,
        via :func:`zsvss_nb.notebook.viz.save_figure`) into ``out``, each atomically."""
        from ..notebook.viz import save_figure

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        md = f"{self.caption()}\n\n{self.markdown()}\n"
        paths = [
            atomic_write_text(out / f"{stem}.md", md),
            atomic_write_text(out / f"{stem}.csv", self.csv()),
            atomic_write_text(out / f"{stem}.tex", self.latex()),
            atomic_write_json(out / f"{stem}.json", self.to_dict()),
        ]
        config, model = self.meta.get("config"), self.meta.get("model")
        for name, fig in (("bars", self.bar_figure()), ("scatter", self.scatter_figure())):
            paths += save_figure(fig, out / f"{stem}_{name}", config=config, model=model)
        return paths


def as_float(value: Any) -> float:
    """A JSON number as float, None (a nan written as null) as nan."""
    return math.nan if value is None else float(value)


def latex_escape(text: str) -> str:
    """``text`` with LaTeX's special characters escaped."""
    table = {
        "\\": r"\textbackslash{}",
        "&": r"\&",
        "%": r"\%",
        "$": r"\$",
        "#": r"\#",
        "_": r"\_",
        "{": r"\{",
        "}": r"\}",
        "~": r"\textasciitilde{}",
        "^": r"\textasciicircum{}",
    }
    return "".join(table.get(ch, ch) for ch in text)


def _latex_header(header: str) -> str:
    if header.startswith("mVC"):
        return f"mVC$_{{{header[3:]}}}$"
    return latex_escape(header)
