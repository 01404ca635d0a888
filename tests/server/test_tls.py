"""HTTPS: `appliance serve` with a certificate made here (self-signed, by the openssl CLI), used by
the real `openai` client, the dashboard's client and curl-like plain requests; and the one-line
errors for a certificate without a key, unreadable files and a key that does not match.
"""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import httpx
import openai
import pytest

from tests.server.helpers import ADMIN_KEY, ServerProcess, served

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")


def make_certificate(folder: Path, name: str) -> tuple[Path, Path]:
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                    "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True)
    return cert, key


class TlsServer(ServerProcess):
    """The test server on https; its probes trust the test's certificate."""

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def _context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.env_extra["APPLIANCE_TLS_CERT"])

    def health(self) -> int | None:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=5, context=self._context()) as resp:
                return resp.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return None

    def get_json(self, path: str, key: str = ADMIN_KEY) -> dict:
        req = urllib.request.Request(self.url + path, headers={"Authorization": f"Bearer {key}"})
        with urllib.request.urlopen(req, timeout=30, context=self._context()) as resp:
            return json.loads(resp.read())


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    return make_certificate(tmp_path_factory.mktemp("tls"), "server")


@pytest.fixture(scope="module")
def https_server(tmp_path_factory, certificate) -> TlsServer:
    cert, key = certificate
    env = {"APPLIANCE_TLS_CERT": str(cert), "APPLIANCE_TLS_KEY": str(key)}
    with served(TlsServer(tmp_path_factory.mktemp("tls-server") / "data", env)) as proc:
        yield proc


def test_openai_client_over_https(https_server, certificate):
    cert = str(certificate[0])
    with httpx.Client(verify=cert) as http:
        client = openai.OpenAI(base_url=https_server.url + "/v1", api_key=ADMIN_KEY, http_client=http,
                               max_retries=0, timeout=120)
        assert [m.id for m in client.models.list().data] == [https_server.model, "v1"]
        stream = client.chat.completions.create(
            model=https_server.model, messages=[{"role": "user", "content": "Name a colour."}], max_tokens=4,
            temperature=0, stream=True, stream_options={"include_usage": True})
        chunks = list(stream)
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    with httpx.Client() as untrusting:  # the system's CAs do not know a self-signed certificate
        client = openai.OpenAI(base_url=https_server.url + "/v1", api_key=ADMIN_KEY, http_client=untrusting,
                               max_retries=0, timeout=30)
        with pytest.raises(openai.APIConnectionError):
            client.models.list()


def test_plain_http_is_not_served_on_the_tls_port(https_server):
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        urllib.request.urlopen(f"http://127.0.0.1:{https_server.port}/health", timeout=10)
    assert https_server.health() == 200


async def test_dashboard_client_over_https(https_server, certificate):
    from tui.app import DashboardApp

    app = DashboardApp(https_server.url, ADMIN_KEY, autopoll=False, ca_cert=str(certificate[0]))
    async with app.run_test(size=(100, 30)):
        assert await app.refresh_now(), app.last_error
        assert app.last_poll.stats.model == https_server.model
    untrusting = DashboardApp(https_server.url, ADMIN_KEY, autopoll=False)
    async with untrusting.run_test(size=(100, 30)):
        assert not await untrusting.refresh_now()
        assert "TLS certificate is not trusted" in untrusting.last_error, untrusting.last_error


def _serve(argv: list[str], capsys) -> tuple[int, str]:
    """`appliance serve` in-process: every case here fails before a socket or a model is touched."""
    from appliance.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--port", "0", *argv])
    return exit_info.value.code, capsys.readouterr().err


def test_tls_settings_mistakes_get_one_line(tmp_path, capsys, monkeypatch):
    cert, key = make_certificate(tmp_path, "a")
    other_cert, other_key = make_certificate(tmp_path, "b")
    unreadable = tmp_path / "unreadable.key"
    unreadable.write_text("secret")
    unreadable.chmod(0)
    monkeypatch.delenv("APPLIANCE_TLS_CERT", raising=False)
    monkeypatch.delenv("APPLIANCE_TLS_KEY", raising=False)
    cases = [
        (["--tls-cert", str(cert)], "--tls-cert needs --tls-key too"),
        (["--tls-key", str(key)], "--tls-key needs --tls-cert too"),
        (["--tls-cert", str(cert), "--tls-key", str(tmp_path / "missing.key")], "cannot read TLS key"),
        (["--tls-cert", str(key), "--tls-key", str(key)], "not a PEM certificate"),
        (["--tls-cert", str(cert), "--tls-key", str(other_key)], "key does not belong to the certificate"),
    ]
    if not _readable(unreadable):  # root reads any file
        cases.append((["--tls-cert", str(cert), "--tls-key", str(unreadable)], "cannot read TLS key"))
    for argv, expected in cases:
        code, err = _serve(argv, capsys)
        assert code == 1 and err.count("\n") == 1 and expected in err, (argv, err)
        assert err.startswith("appliance: error: ") and "Traceback" not in err
    monkeypatch.setenv("APPLIANCE_TLS_CERT", str(other_cert))
    code, err = _serve([], capsys)
    assert code == 1 and "--tls-cert needs --tls-key too" in err, err


def _readable(path: Path) -> bool:
    try:
        path.read_bytes()
    except OSError:
        return False
    return True
