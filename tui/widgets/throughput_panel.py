"""Throughput panel: prompt and generation tokens/s over time with the current values, and the queue.

The rates are the server's own (a window of about 10 s over its token counters); the dashboard
plots one point per poll.
"""

from __future__ import annotations

from rich.style import Style
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static

from tui import format as fmt
from tui.stats import RequestStats, Throughput
from tui.widgets.timeseries import TimeSeries

PROMPT, GENERATION = "#c678dd", "#98c379"


def rate_line(label: str, value: float | None, color: str) -> Text:
    text = Text(end="")
    text.append("■ ", Style(color=color))
    text.append(f"{label:<11}")
    text.append(f"{fmt.DASH if value is None else fmt.rate(value):>9}", Style(bold=True))
    text.append(" tok/s")
    return text


def requests_text(requests: RequestStats) -> Text:
    text = Text(end="")
    for i, (label, value) in enumerate((("running", requests.running), ("waiting", requests.waiting),
                                        ("preempted", requests.preemptions_total))):
        if i:
            text.append("  ")
        text.append(f"{label} ")
        text.append(fmt.count(value), Style(bold=True))
    return text


class ThroughputPanel(Vertical):
    text = ""
    """The panel's numbers as plain text."""

    def compose(self) -> ComposeResult:
        yield Static(rate_line("prompt", None, PROMPT), id="tp-prompt")
        yield TimeSeries(PROMPT, id="tp-prompt-series")
        yield Static(rate_line("generation", None, GENERATION), id="tp-gen")
        yield TimeSeries(GENERATION, id="tp-gen-series")
        yield Static(fmt.DASH, id="tp-requests")

    def on_mount(self) -> None:
        self.border_title = "Throughput"

    def show(self, throughput: Throughput, requests: RequestStats) -> None:
        prompt = rate_line("prompt", throughput.prompt_tokens_per_s, PROMPT)
        gen = rate_line("generation", throughput.generation_tokens_per_s, GENERATION)
        queue = requests_text(requests)
        self.query_one("#tp-prompt", Static).update(prompt)
        self.query_one("#tp-gen", Static).update(gen)
        self.query_one("#tp-requests", Static).update(queue)
        self.query_one("#tp-prompt-series", TimeSeries).push(throughput.prompt_tokens_per_s)
        self.query_one("#tp-gen-series", TimeSeries).push(throughput.generation_tokens_per_s)
        self.text = "\n".join((prompt.plain, gen.plain, queue.plain))
