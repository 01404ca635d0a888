"""Ask from the panel: pick a tenant and one of its collections, type a question, watch the answer.

The screen acts as the chosen tenant through `TenantKeys` (a key minted for it and revoked when the
operator picks another tenant or leaves; see tui/ask_session.py), so the answer is exactly what that
tenant's users get: its collections, its prefix-cache salt, its limits. While the answer streams it
shows the text as it grows; at the end the sources, the time to first token (measured here, from
sending the question to the first text), the prompt's cached tokens and the request's trace id.
Network work runs in workers; the clock is injectable so snapshots do not depend on timing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from rich.style import Style
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import Button, Footer, Input, Label, Select, Static

from tui.ask_session import (
    ADMIN_TENANT,
    AnswerDelta,
    AnswerFinished,
    AnswerStarted,
    AskClient,
    Source,
    TenantKeys,
)
from tui.client import ApiError

DEFAULT_MAX_TOKENS = 128
DIM = Style(color="#7f848e")


@dataclass(slots=True)
class AnswerTiming:
    """When the question went out and when its first text and its end came back (clock seconds)."""

    sent_at: float
    first_text_at: float | None = None
    finished_at: float | None = None

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_text_at is None else self.first_text_at - self.sent_at


class AskScreen(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "close", "Back to the dashboard")]

    def __init__(self, client: AskClient, tenant: str | None = None, max_tokens: int = DEFAULT_MAX_TOKENS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """`tenant`: the one to start with (else the first tenant that is not admin)."""
        super().__init__()
        self.client = client
        self.keys = TenantKeys(client)
        self._keys_lock = asyncio.Lock()  # one tenant switch or release at a time: no key minted twice
        self.initial_tenant = tenant
        self.max_tokens = max_tokens
        self.clock = clock
        self.answer = ""
        self.timing: AnswerTiming | None = None
        self.trace_id: str | None = None
        self.finished: AnswerFinished | None = None

    def compose(self) -> ComposeResult:
        with Horizontal(id="ask-scope"):
            yield Label("Tenant ")
            yield Select([], prompt="tenant", allow_blank=True, compact=True, id="ask-tenant")
            yield Label("  Collection ")
            yield Select([], prompt="collection", allow_blank=True, compact=True, id="ask-collection")
        with Horizontal(id="ask-row"):
            yield Input(placeholder="your question", id="ask-question")
            yield Button("Ask", variant="primary", id="ask-submit")
        with VerticalScroll(id="ask-answer-box"):
            yield Static(id="ask-answer")
        yield Static(id="ask-sources")
        yield Static(id="ask-stats")
        yield Static(id="ask-message")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#ask-answer-box").border_title = "Answer"
        self.query_one("#ask-sources").border_title = "Sources"
        self.show_message("loading the tenants ...")
        self.query_one("#ask-question", Input).focus()
        self.load_tenants()

    async def on_unmount(self) -> None:
        await self._release_key()

    async def action_close(self) -> None:
        await self._release_key()
        self.dismiss(None)

    async def _release_key(self) -> None:
        try:
            async with self._keys_lock:
                await self.keys.release()
        except ApiError as exc:
            self.app.notify(f"could not revoke the Ask screen's key: {exc.message}", severity="error")

    # --- tenant and collection ---------------------------------------------------------------
    @work(group="ask-tenants", exit_on_error=False)
    async def load_tenants(self) -> None:
        try:
            names = sorted(str(t["name"]) for t in await self.client.tenants())
        except ApiError as exc:
            self.show_message(f"cannot list the tenants: {exc.message}", error=True)
            return
        select = self.query_one("#ask-tenant", Select)
        select.set_options([(name, name) for name in names])
        if names:
            select.value = _first_tenant(names, self.initial_tenant)

    @on(Select.Changed, "#ask-tenant")
    def tenant_changed(self, event: Select.Changed) -> None:
        if event.value is not Select.NULL:
            self.act_as(str(event.value))

    @work(group="ask-scope", exit_on_error=False)
    async def act_as(self, tenant: str) -> None:
        collections = self.query_one("#ask-collection", Select)
        collections.set_options([])
        try:
            async with self._keys_lock:
                await self.keys.act_as(tenant)
                names = await self.client.collection_names(self.keys.key)
        except ApiError as exc:
            self.show_message(f"cannot act as tenant {tenant!r}: {exc.message}", error=True)
            return
        if self.query_one("#ask-tenant", Select).value != tenant:
            return  # picked another tenant meanwhile: its own switch follows
        collections.set_options([(name, name) for name in names])
        if names:
            collections.value = names[0]
        how = "with the admin key" if tenant == ADMIN_TENANT else "with a key made for this screen"
        none = "" if names else f"; tenant {tenant!r} has no collections yet (i on the dashboard ingests)"
        self.show_message(f"asking as tenant {tenant!r} {how}{none}")

    # --- asking ------------------------------------------------------------------------------
    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.submit()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.submit()

    def submit(self) -> None:
        question = self.query_one("#ask-question", Input).value.strip()
        collection = self.query_one("#ask-collection", Select).value
        if not question:
            self.show_message("type a question first", error=True)
        elif collection is Select.NULL or self.keys.tenant is None:
            self.show_message("pick a tenant and one of its collections first", error=True)
        else:
            self.ask(str(collection), question)

    @work(exclusive=True, group="ask", exit_on_error=False)
    async def ask(self, collection: str, question: str) -> None:
        self.answer, self.trace_id, self.finished = "", None, None
        self.timing = AnswerTiming(self.clock())
        self._show_answer()
        self.show_message(f"asking {collection!r} as tenant {self.keys.tenant!r} ...")
        try:
            async for event in self.client.ask(self.keys.key, collection, question, self.max_tokens):
                self._on_event(event)
        except ApiError as exc:
            self.show_message(f"the question failed: {exc.message}", error=True)
            return
        self.timing.finished_at = self.clock()
        self._show_answer()
        self.show_message(f"answered from {collection!r} as tenant {self.keys.tenant!r}")

    def _on_event(self, event: AnswerStarted | AnswerDelta | AnswerFinished) -> None:
        assert self.timing is not None
        if isinstance(event, AnswerStarted):
            self.trace_id = event.trace_id
        elif isinstance(event, AnswerDelta):
            if self.timing.first_text_at is None:
                self.timing.first_text_at = self.clock()
            self.answer += event.text
        else:
            self.finished = event
        self._show_answer()

    # --- drawing -----------------------------------------------------------------------------
    def _show_answer(self) -> None:
        self.query_one("#ask-answer", Static).update(self.answer.strip())
        self.query_one("#ask-answer-box", VerticalScroll).scroll_end(animate=False)
        self.query_one("#ask-sources", Static).update(sources_text(self.finished.sources if self.finished
                                                                   else []))
        self.query_one("#ask-stats", Static).update(stats_text(self.timing, self.finished, self.trace_id))

    def show_message(self, message: str, error: bool = False) -> None:
        line = self.query_one("#ask-message", Static)
        line.set_class(error, "-error")
        line.update(Text.assemble(("✖ " if error else "", Style(bold=True)), message))


def _first_tenant(names: list[str], wanted: str | None) -> str:
    if wanted in names:
        return wanted
    return next((name for name in names if name != ADMIN_TENANT), names[0])


def sources_text(sources: list[Source]) -> Text:
    text = Text(end="")
    for i, src in enumerate(sources):
        score = f" · score {src.score:.2f}" if isinstance(src.score, (int, float)) else ""
        text.append(("\n" if i else "") + f"{src.label} ", Style(bold=True))
        text.append(src.source)
        text.append(f" · chunk {src.chunk_index}{score}", DIM)
    return text


def stats_text(timing: AnswerTiming | None, finished: AnswerFinished | None, trace_id: str | None) -> Text:
    """Two lines: timing and tokens, then the prompt's cache hits and the trace id."""
    if timing is None:
        return Text("ask a question: the answer streams here, then its sources and numbers", DIM)
    ttft = timing.ttft_s
    parts = [f"TTFT {ttft:.2f} s" if ttft is not None else "waiting for the first token"]
    if finished is not None and timing.finished_at is not None:
        parts.append(f"{finished.completion_tokens} tokens in {timing.finished_at - timing.sent_at:.2f} s"
                     f" ({finished.finish_reason or 'unfinished'})")
    details = [f"trace {trace_id or '—'}"]
    if finished is not None:
        share = finished.cached_tokens / finished.prompt_tokens if finished.prompt_tokens else 0.0
        cached = f"prompt {finished.prompt_tokens} tokens, {finished.cached_tokens} cached ({share:.0%})"
        details.insert(0, cached)
    return Text(" · ".join(parts) + "\n" + " · ".join(details), end="")
