"""Admission panel: whether new requests are let in, the server's bounded queue, requests in flight."""

from __future__ import annotations

from rich.style import Style
from rich.text import Text
from textual.widgets import Static

from tui import format as fmt
from tui.stats import AdmissionStats, RequestStats

OPEN, PAUSED = "#98c379", "#e06c75"


def admission_text(admission: AdmissionStats, requests: RequestStats) -> Text:
    text = Text("admission  ", end="")
    if admission.draining:
        text.append("draining (shutting down)", Style(color=PAUSED, bold=True))
    elif admission.paused:
        text.append("PAUSED", Style(color=PAUSED, bold=True))
        text.append(" · new requests get 503", Style(dim=True))
    else:
        text.append("open", Style(color=OPEN, bold=True))
    queued = f"{fmt.count(admission.queued_requests)}/{fmt.count(admission.max_queued_requests)}"
    text.append(f"\nqueued     {queued} req · {fmt.count(admission.queued_tokens)} tok")
    text.append(f"\nin flight  {fmt.count(admission.inflight)} · finished {fmt.count(requests.num_finished)}")
    return text


class AdmissionPanel(Static):
    text = ""
    """The panel's numbers as plain text."""

    def on_mount(self) -> None:
        self.border_title = "Admission"
        self.update(fmt.DASH)

    def show(self, admission: AdmissionStats, requests: RequestStats) -> None:
        text = admission_text(admission, requests)
        self.update(text)
        self.text = text.plain
