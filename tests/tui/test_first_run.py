"""`make run`'s first run: on a terminal it ends in the live dashboard, without one it prints its command.

`appliance demo` (what `make run` runs, with APPLIANCE_DATA_DIR and APPLIANCE_PORT set as a user
would) is driven in a real pseudo-terminal by tmux: the dashboard must come up on its own with the
demo's traffic on it and say what q does; q must stop the appliance cleanly. Then a second run on the
same data dir without a terminal must find the documents already there, reuse the demo's admin key,
print the exact dashboard command, and keep serving; that command is then parsed by the real CLI and
its dashboard connects. The bundled samples and short answers keep each run to its model load.
"""

from __future__ import annotations

import asyncio
import os
import queue
import re
import shlex
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from appliance.cli import build_parser
from appliance.commands.dashboard import resolve
from appliance.commands.demo import SAMPLES
from appliance.commands.demo_keys import ADMIN_KEY_FILE
from tests.server.helpers import appliance_bin, free_port
from tests.tui.helpers import wait_until
from tui.app import DashboardApp
from tui.widgets.tenants_table import TenantsTable

REPO = Path(__file__).resolve().parents[2]
SIZE = (120, 36)
START_TIMEOUT_S = 300
DEMO_ARGS = ["demo", "--docs", str(SAMPLES), "--max-tokens", "8"]
QUIT_NOTE = "demo: q quits the dashboard and stops this appliance"  # on the message line, until an action
DEMO_TRAFFIC = re.compile(r"\bdemo\s+[1-9][\d,.k]*\s")  # the tenants table's row: demo, requests > 0


@dataclass(slots=True)
class FirstRun:
    data_dir: Path
    dashboard: str  # the pane while the dashboard was up
    after_quit: str  # the pane (with its scrollback) once the process had exited
    exit_status: int
    key_file_mode: int
    key: str


def demo_env(data_dir: Path, port: int) -> dict[str, str]:
    return {"APPLIANCE_DATA_DIR": str(data_dir), "APPLIANCE_PORT": str(port),
            "APPLIANCE_KV_CACHE_GIB": "0.25", "HF_HUB_OFFLINE": "1"}


class Tmux:
    """One tmux server on a private socket, so nothing else's sessions are touched; killed at the end.

    The exit status comes from the shell that runs the demo (it writes `$?` to a file): tmux's own
    pane_dead_status is sometimes never filled in on a loaded machine (the child stays unreaped)."""

    def __init__(self, workdir: Path) -> None:
        self.socket = f"appliance-first-run-{free_port()}"
        self.config = workdir / "tmux.conf"
        self.config.write_text("set -g remain-on-exit on\n")  # keep the pane to read after the exit
        self.status_file = workdir / "exit-status"

    def __call__(self, *args: str) -> str:
        done = subprocess.run(["tmux", "-L", self.socket, "-f", str(self.config), *args], capture_output=True,
                              text=True, timeout=30, check=True)
        return done.stdout

    def start(self, command: list[str], env: dict[str, str]) -> None:
        flags = [part for name, value in env.items() for part in ("-e", f"{name}={value}")]
        script = f"{shlex.join(command)}; echo $? > {shlex.quote(str(self.status_file))}"
        self("new-session", "-d", "-s", "demo", "-x", str(SIZE[0]), "-y", str(SIZE[1]), "-c", str(REPO),
             *flags, script)

    def screen(self, history: bool = False) -> str:
        return self("capture-pane", "-p", "-t", "demo", *(("-S", "-400") if history else ()))

    def exit_status(self) -> int | None:
        """The demo's exit status once it has exited (a signal shows as 128 + its number)."""
        text = self.status_file.read_text() if self.status_file.exists() else ""
        return int(text) if text.strip() else None

    def kill(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=30)


def wait_for(what: str, check, tmux: Tmux, timeout_s: float = START_TIMEOUT_S):
    deadline = time.monotonic() + timeout_s
    while (result := check()) is None or result is False:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; the terminal shows:\n{tmux.screen(True)}")
        time.sleep(0.5)
    return result


def dashboard_up(tmux: Tmux) -> str | None:
    screen = tmux.screen()
    if tmux.exit_status() is not None:
        raise AssertionError(f"the demo exited before its dashboard came up:\n{tmux.screen(True)}")
    ready = QUIT_NOTE in screen and "● ready" in screen and DEMO_TRAFFIC.search(screen)
    return screen if ready else None


@pytest.fixture(scope="module")
def first_run(tmp_path_factory) -> Iterator[FirstRun]:
    workdir = tmp_path_factory.mktemp("first-run")
    data_dir = workdir / "data"
    tmux = Tmux(workdir)
    try:
        tmux.start([appliance_bin(), *DEMO_ARGS], demo_env(data_dir, free_port()))
        dashboard = wait_for("the dashboard with the demo's traffic", lambda: dashboard_up(tmux), tmux)
        tmux("send-keys", "-t", "demo", "q")
        status = wait_for("the demo to exit after q", tmux.exit_status, tmux, 120)
        key_file = data_dir / ADMIN_KEY_FILE
        yield FirstRun(data_dir, dashboard, tmux.screen(history=True), status,
                       stat.S_IMODE(key_file.stat().st_mode), key_file.read_text().strip())
    finally:
        tmux.kill()


def test_on_a_terminal_the_demo_ends_in_its_live_dashboard(first_run):
    screen = first_run.dashboard
    assert "Tenants" in screen and "KV cache" in screen and "Latency" in screen, screen
    after = first_run.after_quit
    assert "Answer:" in after, after
    assert "Opening the dashboard (q closes it and stops the appliance)" in after, after
    assert "Dashboard closed: stopping the appliance." in after, after
    assert first_run.exit_status == 0, after
    assert first_run.key_file_mode == 0o600 and first_run.key.startswith("apk_")


class Lines:
    """A process's output, line by line, read in a thread (a pipe read would block the test's loop)."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, args=(proc,), daemon=True).start()

    def _read(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def until(self, wanted: str, timeout_s: float = START_TIMEOUT_S) -> list[str]:
        deadline = time.monotonic() + timeout_s
        while not self.seen or wanted not in self.seen[-1]:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {wanted!r} in time; output:\n" + "\n".join(self.seen)) from None
            if line is None:
                raise AssertionError(f"the demo exited before {wanted!r}; output:\n" + "\n".join(self.seen))
            self.seen.append(line)
        return self.seen


async def test_without_a_terminal_a_second_run_prints_the_dashboard_command_and_serves(first_run):
    port = free_port()
    env = {**os.environ, **demo_env(first_run.data_dir, port)}
    proc = subprocess.Popen([appliance_bin(), *DEMO_ARGS], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, text=True, env=env, cwd=REPO)
    try:
        output = await asyncio.to_thread(Lines(proc).until, "Serving until Ctrl-C.")
        text = "\n".join(output)
        assert "skipped  brindle-street-bakery.txt" in text, text  # the same documents: nothing re-ingested
        command = next(line for line in output if " dashboard --url " in line)
        argv = shlex.split(command)
        assert argv[0] == appliance_bin(), command
        url, key, _ = resolve(build_parser().parse_args(argv[1:]))
        assert (url, key) == (f"http://127.0.0.1:{port}", first_run.key), command  # the key file's key
        app = DashboardApp(url, key, autopoll=False)
        async with app.run_test(size=SIZE) as pilot:
            assert await app.refresh_now(), app.last_error
            table = app.query_one(TenantsTable)
            await wait_until(pilot, lambda: any(row[0] == "demo" for row in table.cells()), "the demo's row")
        assert proc.poll() is None, "the demo stopped instead of serving on"
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 60)
    assert code == 0, code
