"""The help screen: every key, and what each panel's numbers mean."""

from __future__ import annotations

from typing import ClassVar

from rich.style import Style
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Static

KEYS = (
    ("i", "ingest files into a collection (files or directories)"),
    ("f", "flush the prefix cache: cached blocks become free"),
    ("p", "pause / resume admission (paused: new requests get 503)"),
    ("k", "create an API key for a tenant (shown once)"),
    ("e", "edit the highlighted tenant's weight and limits (or enter)"),
    ("a", "ask a question as a tenant: streamed answer, sources, TTFT, trace"),
    ("r", "recent requests: their traces, a waterfall of each one's stages"),
    ("d", "answer quality, retrieval drift and injection flags per collection"),
    ("m", "model versions: live beside the canary, routing rules, events"),
    ("o b", "promote the canary to live / roll back (each asks first)"),
    ("tab", "move between the tenants and collections tables"),
    ("?", "this help"),
    ("q", "quit"),
)
PANELS = (
    ("KV cache", "blocks used by live requests / cached (an idle,"),
    ("", "reusable prefix) / free; prefix hits = prompt tokens"),
    ("", "served from the cache; waste = held slots unfilled"),
    ("Throughput", "prompt tokens computed (cache hits excluded) and"),
    ("", "generated, per second (the server's ~10 s window)"),
    ("Latency", "time to first token, time per output token:"),
    ("", "p50/p95 of the requests of the last minute"),
    ("Admission", "open or paused, the server's queue, in flight"),
    ("Alerts", "a red strip on top while alerts fire (GET /admin/alerts)"),
)


def help_text() -> Text:
    text = Text(end="")
    text.append("Keys\n", Style(bold=True))
    for key, what in KEYS:
        text.append(f"  {key:<5}", Style(bold=True, color="#e5c07b"))
        text.append(f"{what}\n")
    text.append("\nPanels\n", Style(bold=True))
    for name, what in PANELS:
        text.append(f"  {name:<11}", Style(bold=True))
        text.append(f"{what}\n")
    text.append("\nescape closes this screen", Style(dim=True))
    return text


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,question_mark,q", "close", "Close")]

    def compose(self) -> ComposeResult:
        with Vertical(id="help-box", classes="dialog"):
            yield Static(help_text(), id="help-text")

    def on_mount(self) -> None:
        self.query_one("#help-box").border_title = "Help"

    def action_close(self) -> None:
        self.dismiss(None)
