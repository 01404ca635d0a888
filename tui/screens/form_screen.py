"""What every form dialog of the dashboard shares: how it is left.

Enter in a field or the Submit button sends the form (each dialog's `submit`); Cancel or Escape
closes it with no result. The dialogs differ only in their fields and what submitting does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from textual.screen import ModalScreen
from textual.widgets import Button, Input

ResultT = TypeVar("ResultT")


class FormScreen(ModalScreen[ResultT]):
    submit: Callable[[], None]  # each dialog defines it: validate its fields, then send or dismiss
    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.submit()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "submit":
            self.submit()
        else:
            self.dismiss(None)

    def action_cancel(self) -> None:
        self.dismiss(None)
