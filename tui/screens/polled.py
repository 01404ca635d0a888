"""A screen that shows one server read and polls it like the dashboard does.

Polling runs in a worker, never doubled up; `autopoll=False` leaves it to the caller (`refresh_now()`),
so snapshots do not depend on timing. A failed read keeps the last numbers and says why under them.
Subclasses say what to read (`fetch`), how to show it (`show`) and how to show a failed read
(`show_problem`).
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from typing import ClassVar, Generic, TypeVar

from textual.binding import Binding, BindingType
from textual.screen import Screen

from tui.client import ApiError, ApplianceClient

R = TypeVar("R")


class _PolledMeta(type(Screen), ABCMeta):
    """Textual's message-pump metaclass with abstract methods: a screen lacking one cannot be made."""


class PolledScreen(Screen[None], Generic[R], metaclass=_PolledMeta):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "close", "Back to the dashboard")]
    POLL_GROUP: ClassVar[str] = "screen"

    def __init__(self, client: ApplianceClient, poll_interval_s: float = 1.0, autopoll: bool = True) -> None:
        super().__init__()
        self.client = client
        self.poll_interval_s = poll_interval_s
        self.autopoll = autopoll
        self._polling = False

    def on_mount(self) -> None:
        if self.autopoll:
            self.poll()
            self.set_interval(self.poll_interval_s, self.poll)

    def action_close(self) -> None:
        self.dismiss(None)

    def poll(self) -> None:
        if not self._polling:
            self._polling = True
            self.run_worker(self.refresh_now(), group=self.POLL_GROUP, exit_on_error=False)

    async def refresh_now(self) -> bool:
        """One read, shown on screen; True when the server answered."""
        self._polling = True
        try:
            report = await self.fetch()
        except ApiError as exc:
            self.show_problem(exc.message)
            return False
        except ValueError as exc:  # an answer of the wrong shape
            self.show_problem(str(exc))
            return False
        finally:
            self._polling = False
        self.show(report)
        return True

    @abstractmethod
    async def fetch(self) -> R:
        """Read the server (ApiError, or ValueError for an answer of the wrong shape)."""

    @abstractmethod
    def show(self, report: R) -> None:
        """Put a fresh read on screen."""

    @abstractmethod
    def show_problem(self, message: str) -> None:
        """Say why the read failed, keeping the last numbers."""
