"""Server settings layering and the Prometheus/percentile helpers (no server needed)."""

from __future__ import annotations

import pytest

from appliance.server.admission import Admission
from appliance.server.config import ConfigError, load_config
from appliance.server.errors import ApiError
from appliance.server.metrics import Histogram, RateWindow, ServerMetrics, Window


def test_flags_beat_env_beat_file_beat_defaults(tmp_path):
    toml = tmp_path / "server.toml"
    toml.write_text('[server]\nport = 9001\nhost = "0.0.0.0"\ndrain_timeout_s = 5\nlog_prompts = true\n')
    env = {"APPLIANCE_PORT": "9002", "APPLIANCE_MAX_QUEUED_REQUESTS": "7"}
    cfg = load_config({"port": None, "data_dir": "/srv/x"}, str(toml), env)
    assert (cfg.port, cfg.host, cfg.data_dir, cfg.max_queued_requests) == (9002, "0.0.0.0", "/srv/x", 7)
    assert cfg.drain_timeout_s == 5.0 and cfg.log_prompts is True
    assert load_config({"port": 9003}, str(toml), env).port == 9003
    assert load_config({}, None, {}).port == 8080


@pytest.mark.parametrize("env,message", [
    ({"APPLIANCE_PORT": "eighty"}, "port"),
    ({"APPLIANCE_PORT": "70000"}, "port"),
    ({"APPLIANCE_LOG_PROMPTS": "maybe"}, "log_prompts"),
    ({"APPLIANCE_ADMIN_KEY": "short"}, "at least 16"),
    ({"APPLIANCE_MAX_QUEUED_TOKENS": "0"}, "max_queued_tokens"),
    ({"APPLIANCE_DEVICE": "tpu"}, "device"),
    ({"APPLIANCE_MODEL": "/nonexistent/model.gguf"}, "does not exist"),
])
def test_bad_settings_name_the_setting(env, message):
    with pytest.raises(ConfigError, match=message):
        load_config({}, None, env)


def test_bad_config_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config({}, str(tmp_path / "missing.toml"), {})
    bad = tmp_path / "bad.toml"
    bad.write_text("port = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config({}, str(bad), {})
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("colour = 'blue'\n")
    with pytest.raises(ConfigError, match="unknown setting 'colour'"):
        load_config({}, str(unknown), {})


def test_histogram_buckets_are_cumulative():
    h = Histogram("x_seconds", "help", (0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 2.0):
        h.observe(v)
    lines = h.render()
    assert 'appliance:x_seconds_bucket{le="0.1"} 2' in lines
    assert 'appliance:x_seconds_bucket{le="1.0"} 3' in lines
    assert 'appliance:x_seconds_bucket{le="+Inf"} 4' in lines
    assert "appliance:x_seconds_count 4" in lines and "appliance:x_seconds_sum 2.65" in lines


def test_windows_drop_old_samples_and_rates_use_the_span():
    w = Window(max_age_s=10)
    w.add(5.0, now=0.0)
    for v in (1.0, 2.0, 3.0):
        w.add(v, now=20.0)
    assert w.percentiles(now=21.0) == {"p50": 2.0, "p90": 3.0, "p99": 3.0, "num_samples": 3}
    r = RateWindow(window_s=10)
    r.sample(100, 10, now=0.0)
    r.sample(300, 30, now=4.0)
    assert r.rates()["prompt_tokens_per_s"] == 50.0 and r.rates()["generation_tokens_per_s"] == 5.0


def test_tpot_is_observed_only_with_two_or_more_tokens():
    m = ServerMetrics()
    m.observe_request(ttft=0.5, e2e=0.5, queue=0.0, num_output_tokens=1, finish_reason="stop")
    m.observe_request(ttft=0.5, e2e=1.5, queue=0.1, num_output_tokens=3, finish_reason="length")
    assert m.tpot.num == 1 and m.tpot.total == 0.5
    assert m.request_success.values == {(("finished_reason", "stop"),): 1.0,
                                        (("finished_reason", "length"),): 1.0}


async def test_admission_bounds_queue_and_tokens():
    a = Admission(max_queued_requests=2, max_queued_tokens=100)
    first = a.admit("a", 60)
    with pytest.raises(ApiError) as full_tokens:
        a.admit("b", 50)
    assert full_tokens.value.status == 503 and full_tokens.value.headers["Retry-After"]
    second = a.admit("c", 40)
    with pytest.raises(ApiError):
        a.admit("d", 1)
    a.started(first)
    third = a.admit("e", 10)
    for ticket in (first, second, third):
        a.release(ticket)
    a.release(first)  # idempotent
    assert (a.num_queued, a.num_queued_tokens, a.num_inflight) == (0, 0, 0)
    a.is_paused = True
    with pytest.raises(ApiError, match="paused"):
        a.admit("f", 1)
