"""Edit a tenant's scheduling weight and limits (PATCH /admin/tenants/{name}).

The form starts from the tenant's current settings and sends only the fields the operator changed,
so an edit never overwrites a limit someone else set meanwhile. An empty limit sends null: back to
the server's default (concurrency, queued tokens) or unlimited (tokens per day, requests per
minute). Typing mistakes are caught here; the server's refusals land under the field it names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Grid, Horizontal, Vertical
from textual.widgets import Button, Input, Label, Static
from textual.worker import Worker, WorkerState

from tui.client import ApiError, ApplianceClient
from tui.forms import limit_value, weight_value
from tui.screens.form_screen import FormScreen


@dataclass(slots=True, frozen=True)
class FormField:
    name: str  # the server's field (and the Input's id)
    label: str
    parse: Callable[[str], tuple[object, str | None]]


FIELDS = (
    FormField("weight", "weight", weight_value),
    FormField("max_concurrent_requests", "concurrent requests", limit_value),
    FormField("max_queued_tokens", "queued prompt tokens", limit_value),
    FormField("token_quota_per_day", "tokens per day", limit_value),
    FormField("requests_per_minute", "requests per minute", limit_value),
)
HINT = "empty = server default (concurrency, queue) or unlimited (tokens, rate)"


@dataclass(slots=True, frozen=True)
class TenantUpdate:
    name: str
    changed: dict  # field -> the new value (None: default)
    tenant: dict  # the server's answer: the tenant as it is now


class TenantLimitsScreen(FormScreen[TenantUpdate | None]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, client: ApplianceClient, name: str, settings: dict) -> None:
        super().__init__()
        self.client = client
        self.tenant_name = name
        self.settings = settings

    def compose(self) -> ComposeResult:
        with Vertical(id="limits-box", classes="dialog"):
            with Grid(id="limits-grid"):
                for f in FIELDS:
                    yield Label(f.label)
                    yield Input(_shown(self.settings.get(f.name)), id=f.name)
            yield Static(id="limits-error", classes="field-error")
            yield Static(HINT, classes="hint")
            with Horizontal(classes="buttons"):
                yield Button("Save", variant="primary", id="submit")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#limits-box").border_title = f"Tenant {self.tenant_name!r}: weight and limits"
        self.query_one("#weight", Input).focus()

    def submit(self) -> None:
        changed: dict = {}
        for f in FIELDS:
            value, error = f.parse(self.query_one(f"#{f.name}", Input).value)
            if error is not None:
                self.show_error(f.name, f"{f.label}: {error}")
                return
            if value != self.settings.get(f.name):
                changed[f.name] = value
        self.show_error(None, None)
        if not changed:
            self.dismiss(None)
            return
        self.query_one("#submit", Button).disabled = True
        self.save(changed)

    @work(exclusive=True, group="tenant-limits", exit_on_error=False)
    async def save(self, changed: dict) -> None:
        try:
            tenant = await self.client.update_tenant(self.tenant_name, changed)
        except ApiError as exc:
            self.show_error(exc.param, exc.message)
            self.query_one("#submit", Button).disabled = False
            return
        self.dismiss(TenantUpdate(self.tenant_name, changed, tenant))

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.state == WorkerState.ERROR:
            error = event.worker.error
            self.show_error(None, f"failed unexpectedly: {type(error).__name__}: {error}")
            self.query_one("#submit", Button).disabled = False

    def show_error(self, field: str | None, message: str | None) -> None:
        error = self.query_one("#limits-error", Static)
        error.update(message or "")
        error.set_class(message is not None, "-shown")
        for f in FIELDS:
            self.query_one(f"#{f.name}", Input).set_class(f.name == field, "-invalid")


def _shown(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def describe(update: TenantUpdate) -> str:
    """What the confirmation line says: the fields changed, as the server now has them."""
    labels = {f.name: f.label for f in FIELDS}
    parts = []
    for name in update.changed:
        value = update.tenant.get(name)
        parts.append(f"{labels[name]} {'default' if value is None else _shown(value)}")
    return f"tenant {update.name!r} updated: " + ", ".join(parts)
