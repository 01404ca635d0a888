"""A real `appliance serve` subprocess on 127.0.0.1 for the server tests, plus small HTTP helpers."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from multidict import CIMultiDict

ADMIN_KEY = "test-admin-key-0123456789abcdef"
STARTUP_TIMEOUT_S = 300


def appliance_bin() -> str:
    """The installed `appliance` console script of this interpreter's environment."""
    path = Path(sys.executable).parent / "appliance"
    assert path.exists(), f"{path} is missing: run `make install`"
    return str(path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerProcess:
    data_dir: Path
    env_extra: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    model: str = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / f"server-{self.port}.log"

    def start(self) -> ServerProcess:
        env = {**os.environ, "APPLIANCE_ADMIN_KEY": ADMIN_KEY, "APPLIANCE_KV_CACHE_GIB": "0.25",
               "HF_HUB_OFFLINE": "1", **self.env_extra}
        cmd = [appliance_bin(), "serve", "--host", "127.0.0.1", "--port", str(self.port),
               "--data-dir", str(self.data_dir), "--log-level", "WARNING"]
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        return self

    def health(self) -> int | None:
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(self.url + "/health", timeout=5) as resp:
                return resp.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return None

    def wait_ready(self) -> list[int | None]:
        """Poll /health until 200; returns the statuses seen on the way (503 while loading)."""
        seen: list[int | None] = []
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, f"server exited:\n{self.log()}"
            status = self.health()
            if not seen or seen[-1] != status:
                seen.append(status)
            if status == 200:
                self.model = self.get_json("/v1/models")["data"][0]["id"]
                return seen
            time.sleep(0.2)
        raise TimeoutError(f"server not ready in {STARTUP_TIMEOUT_S} s:\n{self.log()}")

    def get_json(self, path: str, key: str = ADMIN_KEY) -> dict:
        import urllib.request

        req = urllib.request.Request(self.url + path, headers={"Authorization": f"Bearer {key}"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        self.terminate()
        try:
            code = self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._log.close()
        return code


@contextmanager
def served(proc: ServerProcess, check_exit: bool = True) -> Iterator[ServerProcess]:
    """Start the server, hand it over once /health is 200, stop it however the tests end (and, with
    check_exit, fail unless it exited cleanly)."""
    proc.start()
    try:
        proc.wait_ready()
        yield proc
    finally:
        code = proc.stop()
        if check_exit:
            assert code == 0, f"server exit code {code}:\n{proc.log()}"


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def post_json(session: aiohttp.ClientSession, url: str, body, key: str | None = ADMIN_KEY,
                    **kwargs) -> tuple[int, dict, dict]:
    headers = auth(key) if key else {}
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    async with session.post(url, data=data, headers=headers, **kwargs) as resp:
        text = await resp.text()
        try:
            payload = json.loads(text)
        except ValueError:
            payload = {"raw": text}
        return resp.status, payload, CIMultiDict(resp.headers)


def sse_events(raw: str) -> list:
    """The data payloads of an SSE body: JSON objects, and the string '[DONE]'."""
    events = []
    for line in raw.splitlines():
        if line.startswith("data: "):
            data = line[len("data: "):]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def assert_openai_error(status: int, payload: dict, expected_status: int) -> dict:
    assert status == expected_status, (status, payload)
    assert set(payload) == {"error"}, payload
    err = payload["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"], err
    return err
