"""`appliance dashboard`: flags and environment, and one clear line for each mistake."""

from __future__ import annotations

import argparse

import pytest

from appliance.cli import main
from appliance.commands.dashboard import resolve
from appliance.commands.remote import DEFAULT_URL


def args(**kw) -> argparse.Namespace:
    return argparse.Namespace(**{"url": None, "api_key": None, "interval": 1.0, **kw})


def test_flags_then_environment_then_defaults(monkeypatch):
    monkeypatch.delenv("APPLIANCE_URL", raising=False)
    monkeypatch.delenv("APPLIANCE_API_KEY", raising=False)
    monkeypatch.setenv("APPLIANCE_ADMIN_KEY", "from-admin-env")
    assert resolve(args()) == (DEFAULT_URL, "from-admin-env", 1.0)
    monkeypatch.setenv("APPLIANCE_API_KEY", "from-api-env")
    monkeypatch.setenv("APPLIANCE_URL", "http://10.0.0.5:9000/")
    assert resolve(args(interval=2.5)) == ("http://10.0.0.5:9000", "from-api-env", 2.5)
    assert resolve(args(url="https://box:8443", api_key="flag")) == ("https://box:8443", "flag", 1.0)


@pytest.mark.parametrize(("argv", "env", "expected"), [
    (["--url", "localhost:8080"], {"APPLIANCE_API_KEY": "k"}, "--url must look like http://HOST:PORT"),
    ([], {}, "the dashboard needs an admin key"),
    (["--interval", "0"], {"APPLIANCE_API_KEY": "k"}, "--interval must be between 0.1 and 3600 seconds"),
])
def test_mistakes_get_one_line_and_exit_1(argv, env, expected, monkeypatch, capsys):
    for name in ("APPLIANCE_URL", "APPLIANCE_API_KEY", "APPLIANCE_ADMIN_KEY"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exit_info:
        main(["dashboard", *argv])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"appliance: error: {expected}"), err
