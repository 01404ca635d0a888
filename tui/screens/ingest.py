"""The ingest form: a collection and one or more paths, checked field by field before the upload."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, Input, Label, Static

from tui.forms import LocalFile, find_files, name_error
from tui.screens.form_screen import FormScreen


@dataclass(slots=True, frozen=True)
class IngestRequest:
    collection: str
    files: list[LocalFile]


class IngestScreen(FormScreen[IngestRequest | None]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, collection: str = "") -> None:
        super().__init__()
        self.default_collection = collection

    def compose(self) -> ComposeResult:
        with Vertical(id="ingest-box", classes="dialog"):
            yield Label("Collection")
            yield Input(self.default_collection, placeholder="e.g. docs", id="collection")
            yield Static(id="collection-error", classes="field-error")
            yield Label("Files or directories (space-separated; quote paths with spaces)")
            yield Input(placeholder="e.g. ~/notes README.md", id="path")
            yield Static(id="path-error", classes="field-error")
            with Horizontal(classes="buttons"):
                yield Button("Ingest", variant="primary", id="submit")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#ingest-box").border_title = "Ingest files"
        self.query_one("#path" if self.default_collection else "#collection", Input).focus()

    def submit(self) -> None:
        collection = self.query_one("#collection", Input).value.strip()
        files, path_error = find_files(self.query_one("#path", Input).value)
        collection_error = name_error(collection, "collection")
        self.show_error("collection", collection_error)
        self.show_error("path", path_error)
        if collection_error is None and path_error is None:
            self.dismiss(IngestRequest(collection, files))

    def show_error(self, field: str, message: str | None) -> None:
        error = self.query_one(f"#{field}-error", Static)
        error.update(message or "")
        error.set_class(message is not None, "-shown")
        self.query_one(f"#{field}", Input).set_class(message is not None, "-invalid")
