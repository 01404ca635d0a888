"""Model versions panel: the live version and the canary side by side, the rules, the last events.

Each card lists what decides a promotion: memory and requests in flight, the server's window of
requests and errors, TTFT and TPOT, and the answer signals of RAG traffic. Without a canary the right
card shows the previous live version (the rollback target) while it is still loaded. A rollback is the
first thing an operator must understand, so the newest one is spelt out on a highlighted line with
the server's reason; event ages come from the panel's clock (a test passes a fixed one).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.style import Style
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Static

from tui import format as fmt
from tui.models import ModelEvent, ModelsReport, ModelVersion, RoutingRule

BAD, WARN, GOOD = Style(color="#e06c75", bold=True), Style(color="#e5c07b"), Style(color="#98c379")
DIM, LABEL = Style(color="#7f848e"), Style(bold=True)
STATE_STYLES = {"live": GOOD, "canary": WARN, "ready": Style(), "loading": WARN, "failed": BAD,
                "retired": DIM}
MAX_EVENTS = 8
LINES = Text("\n", no_wrap=True, overflow="ellipsis", end="")  # joins lines that never wrap


def size(num_bytes: int) -> str:
    """'806 MiB', '1.20 GiB'."""
    if num_bytes >= 1 << 30:
        return f"{num_bytes / (1 << 30):.2f} GiB"
    return f"{num_bytes / (1 << 20):.0f} MiB"


def share_text(version: ModelVersion) -> str:
    """'30% of traffic', '30% + admin', 'tenants admin, ops'."""
    tenants = ", ".join(version.canary_tenants)
    if version.canary_share and tenants:
        return f"{version.canary_share:.0%} + {tenants}"
    return f"tenants {tenants}" if tenants else f"{version.canary_share:.0%} of traffic"


def window_text(version: ModelVersion) -> str:
    w = version.window
    errors = f"{fmt.count(w.errors)} err ({fmt.percent(w.error_rate)})"
    return f"{fmt.count(w.requests)} req · {errors} /{w.window_s:g}s"


def answers_text(version: ModelVersion) -> str:
    grounded = fmt.DASH if version.groundedness_mean is None else f"{version.groundedness_mean:.2f}"
    return f"{fmt.count(version.num_answers)} · grounded {grounded} · idk {fmt.count(version.num_idk)}"


def routes_text(version: ModelVersion) -> str:
    return " · ".join(f"{name} {fmt.count(n)}" for name, n in sorted(version.routes.items())) or fmt.DASH


def objective_text(objective: dict[str, float]) -> str:
    """The canary's guard: '≥20 req · err ≤5% · p90 off' (a bound of 0 is off)."""
    errors, ttft = objective.get("max_error_rate"), objective.get("max_ttft_p90_s")
    error_part = f"err ≤{errors:.0%}" if errors else "err off"
    ttft_part = f"p90 ≤{fmt.seconds(ttft) if ttft >= 0.001 else f'{ttft:g} s'}" if ttft else "p90 off"
    return f"≥{objective.get('min_requests', 0):g} req · {error_part} · {ttft_part}"


def card_rows(version: ModelVersion, objective: dict[str, float]) -> list[tuple[str, Text | str]]:
    state = Text(version.state, STATE_STYLES.get(version.state, Style()), end="")
    state.append(f" · {version.quantization}/{version.dtype}")
    memory = "not loaded"
    if version.loaded:
        memory = f"{size(version.memory_bytes)} · in flight {version.in_flight}"
    w = version.window
    rows: list[tuple[str, Text | str]] = [
        ("state", state), ("memory", memory), ("window", window_text(version)),
        ("TTFT", f"p50 {fmt.seconds(w.ttft_p50_s)} · p90 {fmt.seconds(w.ttft_p90_s)}"),
        ("TPOT", f"p50 {fmt.seconds(w.tpot_p50_s)}"), ("answers", answers_text(version)),
        ("routes", routes_text(version)), ("total", f"{fmt.count(version.requests_total)} req · "
                                                   f"{fmt.count(version.errors_total)} err")]
    if version.state == "canary":
        rows[1:1] = [("share", share_text(version)), ("guard", objective_text(objective))]
    if version.error:
        rows.append(("error", Text(version.error, BAD)))
    return rows


def card_text(rows: list[tuple[str, Text | str]], num_rows: int) -> Text:
    """The rows, padded to `num_rows` lines so that the two cards end on the same line."""
    text = Text(end="")
    for i, (label, value) in enumerate(rows):
        text.append(("\n" if i else "") + f"{label:<8}", LABEL)
        text.append_text(value if isinstance(value, Text) else Text(value))
    text.append("\n" * max(0, num_rows - len(rows)))
    return text


def cards(report: ModelsReport, left: ModelVersion | None, right: ModelVersion | None) -> tuple[Text, Text]:
    rows = [card_rows(v, report.objective) if v else [] for v in (left, right)]
    num_rows = max(len(r) for r in rows)
    live = card_text(rows[0], num_rows) if left else Text("no live version", DIM, end="")
    side = card_text(rows[1], num_rows) if right else Text("no canary: traffic all goes to the live version",
                                                           DIM, end="")
    return live, side


def card_title(version: ModelVersion | None, role: str) -> str:
    return f"{role} · {version.name}" if version else role


def side_version(report: ModelsReport) -> tuple[ModelVersion | None, str]:
    """The right card: the canary, else the previous live version still loaded (a rollback target)."""
    canary = report.version(report.canary)
    if canary is not None:
        return canary, "canary"
    previous = report.version(report.previous_live)
    if previous is not None and previous.loaded:
        return previous, "previous live"
    return None, "canary"


def event_line(event: ModelEvent, now: float) -> Text:
    line = Text(no_wrap=True, overflow="ellipsis", end="")
    line.append(f"{fmt.duration(max(0.0, now - event.time)):>6} ago ", DIM)
    line.append(event.action.replace("_", " "), BAD if event.is_rollback else LABEL)
    line.append(f" {event.version}")
    if event.previous:
        line.append(f" (was {event.previous})", DIM)
    line.append(f" · {event.actor or 'server'}", DIM)
    if event.reason:
        line.append(f" · {event.reason}")
    return line


def rollback_line(event: ModelEvent | None, now: float) -> Text:
    """'⚠ auto rollback of q4 1m05s ago: TTFT p90 0.42 s > ...': the server's reason as is, wrapped
    rather than cut, since it is the one line an operator must read in full."""
    if event is None:
        return Text(end="")
    what = "auto rollback" if event.action == "auto_rollback" else f"rollback by {event.actor or 'server'}"
    text = Text(f"⚠ {what} of {event.version} {fmt.duration(max(0.0, now - event.time))} ago: ", BAD, end="")
    text.append(event.reason or "no reason given")
    return text


def rule_line(rule: RoutingRule) -> Text:
    line = Text(no_wrap=True, overflow="ellipsis", end="")
    line.append(rule.name, LABEL)
    line.append(f" → {rule.version}  {rule.condition}  ")
    line.append(f"{fmt.count(rule.hits)} hit{'' if rule.hits == 1 else 's'}", DIM)
    return line


def rules_text(report: ModelsReport) -> Text:
    if not report.rules:
        return Text("no routing rules: requests follow the canary share", DIM, end="")
    return LINES.join(rule_line(rule) for rule in report.rules)


def head_text(report: ModelsReport) -> Text:
    text = Text(no_wrap=True, overflow="ellipsis", end="")
    text.append(report.served_model or "no model", LABEL)
    used = report.used_bytes / report.budget_bytes if report.budget_bytes else None
    memory = f"{size(report.used_bytes)} of {size(report.budget_bytes)} ({fmt.percent(used, 0)})"
    text.append(f" · memory {memory}")
    text.append(f" · {len(report.versions)} version{'' if len(report.versions) == 1 else 's'}")
    others = [f"{v.name} {v.state}" for v in report.others]
    if others:
        text.append(f": also {', '.join(others)}", DIM)
    return text


def events_text(report: ModelsReport, now: float) -> Text:
    if not report.events:
        return Text("no model events yet", DIM, end="")
    return LINES.join(event_line(e, now) for e in report.events[:MAX_EVENTS])


class ModelsPanel(Vertical):
    report: ModelsReport | None = None
    text = ""
    """The panel as plain text (what an operator reads)."""

    def __init__(self, clock: Callable[[], float] = time.time, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.clock = clock

    def compose(self) -> ComposeResult:
        yield Static(Text("models " + fmt.DASH, DIM), id="models-head")
        yield Static(id="models-why")
        with Horizontal(id="models-cards"):
            yield Static(id="models-live", classes="model-card")
            yield Static(id="models-side", classes="model-card")
        yield Static(id="models-rules")
        yield Static(id="models-events")

    def on_mount(self) -> None:
        self.query_one("#models-rules").border_title = "Routing rules"
        self.query_one("#models-events").border_title = "Events"

    def show(self, report: ModelsReport) -> None:
        self.report, now = report, self.clock()
        side, role = side_version(report)
        live = report.version(report.live)
        why = rollback_line(report.last_rollback, now)
        live_card, side_card = cards(report, live, side)
        parts = {"#models-head": head_text(report), "#models-why": why,
                 "#models-live": live_card, "#models-side": side_card,
                 "#models-rules": rules_text(report), "#models-events": events_text(report, now)}
        for selector, text in parts.items():
            self.query_one(selector, Static).update(text)
        self.query_one("#models-why").set_class(bool(why.plain), "-shown")
        self.query_one("#models-live").border_title = card_title(live, "live")
        self.query_one("#models-side").border_title = card_title(side, role)
        self.text = "\n".join(t.plain for t in parts.values())
