"""Waterfall of one request: a bar per stage on the request's time axis, then the numbers behind them.

Each bar starts and ends where its stage did, in whole cells of the bar area (a stage shorter than a
cell still gets a thin mark), so the picture reads like a tracing UI's: the long bar is where the
time went. Under the bars: the prefill's cached vs computed prompt tokens, the decode's tokens and
finish, and any prompt-injection markers the search found.
"""

from __future__ import annotations

from rich.style import Style
from rich.text import Text
from textual.widget import Widget

from tui import format as fmt
from tui.traces import Stage, Trace

NAME_WIDTH = 10
TIME_WIDTH = 9
STAGE_COLORS = {
    "auth": "#7f848e", "embed": "#61afef", "search": "#56b6c2", "prompt": "#c678dd", "queue": "#e5c07b",
    "prefill": "#d19a66", "decode": "#98c379", "stream": "#56b6c2", "respond": "#56b6c2",
    "engine": "#e06c75",
}
DEFAULT_COLOR = "#abb2bf"
DIM = Style(color="#7f848e")


def millis(value_ms: float) -> str:
    """'0.4 ms', '12 ms', '1.25 s'."""
    if value_ms < 10:
        return f"{value_ms:.1f} ms"
    return fmt.seconds(value_ms / 1000.0)


def bar_cells(stage: Stage, total_ms: float, width: int) -> tuple[int, int]:
    """(first cell, number of cells) of a stage's bar; 0 cells when it is shorter than one cell."""
    if total_ms <= 0 or width <= 0:
        return 0, 0
    first = min(width - 1, int(stage.start_ms / total_ms * width))
    last = min(width, round(stage.end_ms / total_ms * width))
    return first, max(0, last - first)


def _depths(stages: tuple[Stage, ...]) -> dict[str, int]:
    parents = {s.name: s.parent for s in stages}
    depths = {}
    for stage in stages:
        depth, parent = 0, stage.parent
        while parent is not None and depth < len(stages):
            depth, parent = depth + 1, parents.get(parent)
        depths[stage.name] = depth
    return depths


def details(trace: Trace) -> list[str]:
    """The numbers worth a line of their own, stage by stage."""
    lines = []
    for stage in trace.stages:
        a = stage.attributes
        if stage.name == "prefill":
            lines.append(f"prefill: {fmt.count(a.get('appliance.prompt_tokens', 0))} prompt tokens, "
                         f"{fmt.count(a.get('appliance.cached_tokens', 0))} cached, "
                         f"{fmt.count(a.get('appliance.computed_tokens', 0))} computed")
        elif stage.name in ("decode", "engine"):
            tokens = a.get("appliance.output_tokens")
            made = f"{fmt.count(tokens)} tokens, " if tokens is not None else ""
            lines.append(f"{stage.name}: {made}finished by {a.get('appliance.finish_reason', '?')}")
        elif stage.name == "search" and a.get("rag.injection_markers"):
            lines.append(f"search: injection markers {', '.join(a['rag.injection_markers'])}")
    return lines


class Waterfall(Widget):
    """Shows one Trace (or says there is none to show)."""

    DEFAULT_CSS = "Waterfall { height: auto; }"

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.trace: Trace | None = None

    def show(self, trace: Trace | None) -> None:
        self.trace = trace
        if trace is None:
            self.border_title, self.border_subtitle = "Waterfall", ""
        else:
            self.border_title = f"{trace.method} {trace.route} · {millis(trace.duration_ms)}"
            self.border_subtitle = f"trace {trace.trace_id}"
        self.refresh(layout=True)

    def get_content_height(self, container, viewport, width: int) -> int:
        if self.trace is None:
            return 1
        return 1 + len(self.trace.stages) + len(details(self.trace))

    def render(self) -> Text:
        if self.trace is None:
            return Text("no request picked: traced requests appear above", style=DIM, end="")
        trace, width = self.trace, max(10, self.content_size.width - NAME_WIDTH - TIME_WIDTH - 1)
        text = Text(end="")
        total = millis(trace.duration_ms)
        text.append(f"{'stage':<{NAME_WIDTH}}{'0':<{width // 2}}{total:>{width - width // 2}}"
                    f"{'took':>{TIME_WIDTH + 1}}", DIM)
        depths = _depths(trace.stages)
        for stage in trace.stages:
            text.append("\n")
            name = (" " * depths[stage.name] + stage.name)[:NAME_WIDTH - 1]
            color = STAGE_COLORS.get(stage.name, DEFAULT_COLOR)
            first, cells = bar_cells(stage, trace.duration_ms, width)
            text.append(f"{name:<{NAME_WIDTH}}")
            text.append(" " * first)
            text.append("█" * cells if cells else "▏", Style(color=color))
            text.append(" " * (width - first - max(cells, 1)))
            text.append(f" {millis(stage.duration_ms):>{TIME_WIDTH}}")
        for line in details(trace):
            text.append(f"\n{line}", DIM)
        return text
