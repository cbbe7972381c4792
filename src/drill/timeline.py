"""``python -m src.drill --timeline DIR``: one PNG per scenario, drawn from the per-call
resilience report (:class:`~src.report.CallReport`) of the scenario's conversation: the
caller's turns, fillers, answers, tool spans, breaker transitions, and the silences the
caller sat through, shaded with their length.

Needs matplotlib (the ``timeline`` dependency group, installed by ``uv sync``); imported
only when ``--timeline`` is given.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from src import report as call_report
from src.drill.scenarios import Scenario, ScenarioReport, run_scenario
from src.report import CallReport

__all__ = ["draw", "run_with_timelines"]

LANES = ("caller", "agent", "tools", "breakers")
COLORS = {
    "caller": "#4c72b0",
    "filler": "#dd8452",
    "answer": "#55a868",
    "tool": "#8172b3",
    "silence": "#c44e52",
    "open": "#c44e52",
    "half_open": "#ccb974",
    "closed": "#55a868",
}


async def run_with_timelines(
    scenarios: Sequence[Scenario], directory: str | Path
) -> list[ScenarioReport]:
    """Run ``scenarios`` one by one, drawing each one's timeline into ``directory``
    (``<scenario>.png``) from the last call report finished while it ran."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    reports: list[ScenarioReport] = []
    for scenario in scenarios:
        finished: list[CallReport] = []
        call_report.FINISHED_LISTENERS.append(finished.append)
        try:
            reports.append(await run_scenario(scenario))
        finally:
            call_report.FINISHED_LISTENERS.remove(finished.append)
        if finished:
            draw(finished[-1], out / f"{_slug(scenario.name)}.png", scenario.name, scenario.what)
    return reports


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name)


def draw(report: CallReport, path: str | Path, title: str, subtitle: str = "") -> Path:
    """Draw ``report``'s timeline into the PNG ``path`` (seconds from its first event)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.patches import Patch

    times = [t for s in report.segments for t in (s.start, s.end)] + [m.at for m in report.marks]
    origin = min(times, default=0.0)
    span = max(max(times, default=1.0) - origin, 1.0)
    min_width = span * 0.006  # a text-only utterance has no duration: keep it visible
    fig, ax = plt.subplots(figsize=(10, 3.8), dpi=80)
    y = {lane: len(LANES) - 1 - i for i, lane in enumerate(LANES)}

    char_w = span * 0.0085  # roughly one 7-pt character, in seconds
    free_at: dict[tuple[str, int], float] = {}  # (lane, row) -> where its last label ends

    def label_at(lane: str, x: float, text: str, color: str = "black") -> None:
        """A label above (row 0) or below (row 1) the lane, skipped when both are taken."""
        for row, dy, va in ((0, 0.32, "bottom"), (1, -0.32, "top")):
            if free_at.get((lane, row), -1e9) <= x:
                ax.annotate(text, (x, y[lane] + dy), fontsize=7, va=va, color=color)
                free_at[(lane, row)] = x + (len(text) + 1) * char_w
                return

    # Tools of one reply run together: one thin row per tool name inside the lane.
    tools = list(dict.fromkeys(s.label for s in report.segments if s.kind == "tool"))
    row_h = 0.4 / max(len(tools), 1)

    def bar(lane: str, start: float, end: float, color: str, label: str = "") -> None:
        left, width = start - origin, max(end - start, min_width)
        height, center = 0.4, float(y[lane])
        if lane == "tools":
            height = row_h
            center += 0.2 - row_h * (tools.index(label) + 0.5)
        ax.barh(
            center,
            width,
            left=left,
            height=height,
            color=color,
            edgecolor="black",
            lw=0.4,
            zorder=3,
        )
        if label:
            label_at(lane, left, _cut(label))

    for segment in report.segments:
        if segment.kind == "silence":
            left, right = segment.start - origin, segment.end - origin
            ax.axvspan(left, right, color=COLORS["silence"], alpha=0.15, lw=0, zorder=0)
            ax.annotate(
                f"{segment.end - segment.start:.2f} s",
                ((left + right) / 2, -0.75),
                ha="center",
                fontsize=7,
                color=COLORS["silence"],
            )
        elif segment.kind == "caller":
            bar("caller", segment.start, segment.end, COLORS["caller"], segment.label)
        elif segment.kind in ("filler", "answer"):
            bar("agent", segment.start, segment.end, COLORS[segment.kind], segment.label)
        elif segment.kind == "tool":
            bar("tools", segment.start, segment.end, COLORS["tool"], segment.label)
    for mark in report.marks:
        x = mark.at - origin
        color = COLORS.get(mark.state, "black")
        ax.axvline(x, color=color, lw=1.2, ls="--")
        label_at("breakers", x, f"{mark.service} {mark.state}", color)
    ax.set_yticks([y[lane] for lane in LANES], list(LANES))
    ax.set_ylim(-1.0, len(LANES) - 0.3)
    ax.set_xlim(-span * 0.02, span * 1.12)
    ax.set_xlabel("seconds")
    longest = report.longest_silence_s
    ax.set_title(
        f"{title}: longest silence {longest:.2f} s, fillers {report.fillers}, "
        f"fallbacks {sum(report.fallbacks.values())}",
        fontsize=10,
        loc="left",
        pad=16,
    )
    if subtitle:
        fig.text(0.01, 0.01, _cut(subtitle, 110), fontsize=7, color="dimgray")
    legend = [Patch(color=COLORS[k], label=k) for k in ("caller", "filler", "answer", "tool")]
    legend.append(Patch(color=COLORS["silence"], alpha=0.3, label="silence"))
    ax.legend(
        handles=legend,
        fontsize=7,
        loc="lower right",
        bbox_to_anchor=(1.0, 1.0),
        ncols=5,
        frameon=False,
    )
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    target = Path(path)
    fig.savefig(target, format="png")
    plt.close(fig)
    return target


def _cut(text: str, width: int = 30) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"
