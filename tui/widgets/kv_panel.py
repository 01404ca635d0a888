"""KV cache panel: blocks used / cached / free as a bar and as numbers, usage over time, prefix hits,
and what the cache costs: the waste (held slots no token fills) and the KV pool's share of memory."""

from __future__ import annotations

from rich.style import Style
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widget import Widget
from textual.widgets import Static

from tui import format as fmt
from tui.stats import KvStats, PrefixStats
from tui.widgets.timeseries import TimeSeries

USED, CACHED, FREE = "#4ea1ff", "#f5a524", "#4b5263"


def bar_widths(kv: KvStats, width: int) -> tuple[int, int, int]:
    """Cells for used, cached and free blocks; a non-zero share always gets at least one cell."""
    if kv.num_blocks <= 0 or width <= 0:
        return 0, 0, max(width, 0)
    used = round(kv.used_blocks / kv.num_blocks * width)
    cached = round(kv.cached_blocks / kv.num_blocks * width)
    used = max(used, 1 if kv.used_blocks else 0)
    cached = max(cached, 1 if kv.cached_blocks else 0)
    while used + cached > width:
        if cached >= used and cached > 0:
            cached -= 1
        else:
            used -= 1
    return used, cached, width - used - cached


class BlockBar(Widget):
    DEFAULT_CSS = "BlockBar { height: 1; }"

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.kv: KvStats | None = None

    def show(self, kv: KvStats) -> None:
        self.kv = kv
        self.refresh()

    def render(self) -> Text:
        width = self.size.width
        if self.kv is None:
            return Text("░" * width, style=Style(color=FREE), end="")
        used, cached, free = bar_widths(self.kv, width)
        bar = Text(end="")
        bar.append("█" * used, Style(color=USED))
        bar.append("█" * cached, Style(color=CACHED))
        bar.append("░" * free, Style(color=FREE))
        return bar


def numbers_text(kv: KvStats) -> Text:
    def share(n: int) -> str:
        return fmt.percent(n / kv.num_blocks if kv.num_blocks else None)

    rows = (("used", kv.used_blocks, USED, "shared", kv.shared_blocks),
            ("cached", kv.cached_blocks, CACHED, "pinned", kv.pinned_blocks),
            ("free", kv.free_blocks, FREE, "total", kv.num_blocks))
    text = Text(end="")
    for i, (label, n, color, extra_label, extra) in enumerate(rows):
        text.append("■ ", Style(color=color))
        text.append(f"{label:<6}{fmt.count(n):>7}{share(n):>7}  {extra_label:<6}{fmt.count(extra):>6}")
        if i < len(rows) - 1:
            text.append("\n")
    return text


def hits_text(prefix: PrefixStats) -> Text:
    text = Text("prefix hits ", end="")
    text.append(fmt.percent(prefix.hit_rate), Style(bold=True))
    text.append(f"  {fmt.count(prefix.hit_tokens)}/{fmt.count(prefix.query_tokens)} tok")
    if prefix.chunk_hit_tokens or prefix.chunk_blocks:  # only where chunk KV reuse is in use
        text.append("\nchunk hits ")
        text.append(fmt.count(prefix.chunk_hit_tokens), Style(bold=True))
        text.append(f" tok  {fmt.count(prefix.chunk_recomputed_tokens)} recomputed  "
                    f"{fmt.count(prefix.chunk_blocks)} blocks")
    return text


def footprint_text(kv: KvStats) -> Text:
    text = Text("waste ", end="")
    text.append(fmt.percent(kv.waste_perc), Style(bold=True))
    text.append(" · KV ")
    text.append(fmt.percent(kv.memory_share), Style(bold=True))
    text.append(" of memory")
    return text


class KvPanel(Vertical):
    """Blocks of `block_size` tokens; `usage_perc` (the line over time) counts used blocks only."""

    def compose(self) -> ComposeResult:
        yield BlockBar(id="kv-bar")
        yield Static(id="kv-numbers")
        yield Static(id="kv-hits")
        yield Static(id="kv-footprint")
        yield TimeSeries(USED, ceiling=1.0, id="kv-usage")

    def on_mount(self) -> None:
        self.border_title = "KV cache"
        self.border_subtitle = "used · over time"
        self.query_one("#kv-numbers", Static).update(fmt.DASH)
        self.query_one("#kv-hits", Static).update("prefix hits " + fmt.DASH)
        self.query_one("#kv-footprint", Static).update("waste " + fmt.DASH)

    text = ""
    """The panel's numbers as plain text: what an operator reads (tests compare it with the server)."""

    def show(self, kv: KvStats, prefix: PrefixStats) -> None:
        self.border_title = f"KV cache · {fmt.count(kv.num_blocks)} blocks × {kv.block_size} tok"
        numbers, hits, footprint = numbers_text(kv), hits_text(prefix), footprint_text(kv)
        self.query_one(BlockBar).show(kv)
        self.query_one("#kv-numbers", Static).update(numbers)
        self.query_one("#kv-hits", Static).update(hits)
        self.query_one("#kv-footprint", Static).update(footprint)
        self.query_one(TimeSeries).push(kv.usage_perc)
        self.border_subtitle = f"used {fmt.percent(kv.usage_perc)} · over time"
        self.text = f"{numbers.plain}\n{hits.plain}\n{footprint.plain}\nusage {fmt.percent(kv.usage_perc)}"
