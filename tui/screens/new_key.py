"""Create an API key for a tenant (optionally creating the tenant), then show the key once.

The form talks to the server itself so that a refusal (unknown tenant, bad name) lands under the
field that caused it, with the form still open for a correction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from rich.style import Style
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Checkbox, Input, Label, Static
from textual.worker import Worker, WorkerState

from tui.client import ApiError, ApplianceClient
from tui.forms import name_error
from tui.screens.form_screen import FormScreen


@dataclass(slots=True, frozen=True)
class NewKey:
    tenant: str
    key: str
    created_tenant: bool


class NewKeyScreen(FormScreen[NewKey | None]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, client: ApplianceClient) -> None:
        super().__init__()
        self.client = client

    def compose(self) -> ComposeResult:
        with Vertical(id="key-box", classes="dialog"):
            yield Label("Tenant")
            yield Input(placeholder="e.g. acme", id="tenant")
            yield Static(id="tenant-error", classes="field-error")
            yield Checkbox("create the tenant if it does not exist", id="create-tenant")
            with Horizontal(classes="buttons"):
                yield Button("Create key", variant="primary", id="submit")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#key-box").border_title = "New API key"
        self.query_one("#tenant", Input).focus()

    def submit(self) -> None:
        tenant = self.query_one("#tenant", Input).value.strip()
        error = name_error(tenant, "tenant")
        self.show_error(error)
        if error is None:
            self.query_one("#submit", Button).disabled = True
            self.create(tenant, self.query_one("#create-tenant", Checkbox).value)

    @work(exclusive=True, group="new-key", exit_on_error=False)
    async def create(self, tenant: str, create_tenant: bool) -> None:
        try:
            created = await self._ensure_tenant(tenant) if create_tenant else False
            key = await self.client.create_key(tenant)
        except ApiError as exc:
            self.show_error(_explain(exc, tenant))
            self.query_one("#submit", Button).disabled = False
            return
        self.dismiss(NewKey(tenant, key, created))

    async def _ensure_tenant(self, tenant: str) -> bool:
        try:
            await self.client.create_tenant(tenant)
        except ApiError as exc:
            if exc.code == "tenant_exists":
                return False
            raise
        return True

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.state == WorkerState.ERROR:
            self.show_error(f"failed unexpectedly: {type(event.worker.error).__name__}: {event.worker.error}")
            self.query_one("#submit", Button).disabled = False

    def show_error(self, message: str | None) -> None:
        error = self.query_one("#tenant-error", Static)
        error.update(message or "")
        error.set_class(message is not None, "-shown")
        self.query_one("#tenant", Input).set_class(message is not None, "-invalid")


def _explain(exc: ApiError, tenant: str) -> str:
    if exc.code == "tenant_not_found":
        return f"no tenant {tenant!r}: tick 'create the tenant' to create it"
    return exc.message


class KeyShownScreen(ModalScreen[None]):
    """The only time the key is visible: the server keeps just its hash."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,enter", "close", "Close"),
                                             Binding("c", "copy", "Copy")]

    def __init__(self, new_key: NewKey) -> None:
        super().__init__()
        self.new_key = new_key

    def compose(self) -> ComposeResult:
        created = " (tenant created)" if self.new_key.created_tenant else ""
        with Vertical(id="shown-box", classes="dialog"):
            yield Static(f"New key for tenant {self.new_key.tenant!r}{created}:")
            yield Static(Text(self.new_key.key, Style(bold=True, color="#e5c07b")), id="key-value")
            yield Static("It is shown only now: copy it (c copies to the clipboard where the terminal "
                         "allows). enter or escape closes.", classes="hint")

    def on_mount(self) -> None:
        self.query_one("#shown-box").border_title = "API key created"

    def action_copy(self) -> None:
        self.app.copy_to_clipboard(self.new_key.key)
        self.notify("key copied to the clipboard")

    def action_close(self) -> None:
        self.dismiss(None)
