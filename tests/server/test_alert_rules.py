"""The alerting and cost arithmetic on its own: burn rates, windows over the history, alert state
changes, and the engine-time split of the cost ledger (no server; the real-server tests are in
test_alerts.py)."""

from __future__ import annotations

import pytest

from appliance.server.alerts import AlertEngine
from appliance.server.config import ConfigError, ServerConfig, load_config
from appliance.server.cost import CostLedger, EngineClock, Prices, Usage
from appliance.server.signals import History, Sample
from appliance.server.slo import SloError, burn_rate, format_duration, parse_duration, parse_windows

FAST = {"slo_burn_windows": "10s/60s:5:page", "alert_window_s": 30.0, "slo_min_requests": 4,
        "alert_tenant_min_errors": 3, "alert_auth_failures": 5}


class FakeClock:
    """A clock the test moves by hand (time itself is what is under test here)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def engine_at(clock: FakeClock) -> AlertEngine:
    return AlertEngine.from_config(ServerConfig(**FAST).validate(), start=0.0)


def alert(engine: AlertEngine, name: str, **labels: str) -> dict:
    return next(a for a in engine.snapshot() if a["name"] == name and a["labels"] == labels)


def test_burn_windows_parse_and_refuse_bad_specs():
    (w,) = parse_windows("5m/1h:14.4:page")
    assert (w.short_s, w.long_s, w.burn_rate, w.severity, w.label) == (300, 3600, 14.4, "page", "5m/1h")
    assert [parse_duration(t) for t in ("0.5s", "30s", "2h", "3d")] == [0.5, 30, 7200, 259200]
    assert [format_duration(s) for s in (300, 3600, 259200, 2.5)] == ["5m", "1h", "3d", "2.5s"]
    for bad in ("1h/5m:14.4:page", "5m-1h:14.4:page", "5m/1h:fast:page", "5m/1h:0:page", "5m/1h:2:sms",
                "5x/1h:2:page"):
        with pytest.raises(SloError):
            parse_windows(bad)


def test_config_refuses_a_threshold_off_the_histogram_buckets():
    with pytest.raises(ConfigError, match="bucket bound"):
        load_config(environ={"APPLIANCE_SLO_TTFT_S": "2.0"})
    with pytest.raises(ConfigError, match="slo_burn_windows"):
        load_config(environ={"APPLIANCE_SLO_BURN_WINDOWS": "5m"})
    with pytest.raises(ConfigError, match="slo_availability_target"):
        load_config(environ={"APPLIANCE_SLO_AVAILABILITY_TARGET": "1"})
    with pytest.raises(ConfigError, match="price_per_engine_second"):
        load_config(environ={"APPLIANCE_PRICE_PER_ENGINE_SECOND": "-1"})


def test_burn_rate_is_the_bad_share_over_the_budget():
    assert burn_rate(5, 100, 0.95) == pytest.approx(1.0)
    assert burn_rate(72, 100, 0.95) == pytest.approx(14.4)
    assert burn_rate(0, 0, 0.99) == 0.0


def test_history_answers_increase_over_a_window_like_prometheus():
    history = History(start=0.0, max_age_s=60.0, resolution_s=1.0)
    for t in range(1, 241):
        history.add(Sample(float(t), {"c": float(t * 2), "g": float(t % 7)}))
    assert history.increase("c", 10) == 20.0
    assert history.value_before("g", 3) == float(237 % 7)
    assert history.samples[0].at <= 240 - 60, "the base of the longest window must be kept"
    assert len(history.samples) <= 2 * 60 + 1, "old samples are trimmed"
    young = History(start=0.0, max_age_s=60.0, resolution_s=1.0)
    young.add(Sample(5.0, {"c": 7.0}))
    assert young.increase("c", 60) == 7.0, "a window longer than the uptime counts from zero at start"


def test_a_burn_rate_alert_fires_on_both_windows_and_clears_with_the_short_one():
    clock = FakeClock()
    engine = engine_at(clock)
    engine.wall = clock
    assert alert(engine, "ttft_burn_rate", window="10s/60s")["state"] == "ok"
    engine.observe(Sample(5.0, {"ttft.total": 10.0, "ttft.bad": 4.0}))  # 40% bad: 8x the 5% budget
    fired = alert(engine, "ttft_burn_rate", window="10s/60s")
    assert fired["state"] == "firing" and "8.0x over 1m" in fired["summary"], fired
    clock.now += 20
    engine.observe(Sample(20.0, {"ttft.total": 30.0, "ttft.bad": 4.0}))  # 20 good ones since
    cleared = alert(engine, "ttft_burn_rate", window="10s/60s")
    assert cleared["state"] == "ok" and cleared["since"] != fired["since"], cleared


def test_too_few_requests_never_page():
    engine = engine_at(FakeClock())
    engine.observe(Sample(1.0, {"availability.total": 3.0, "availability.bad": 3.0}))
    assert alert(engine, "availability_burn_rate", window="10s/60s")["state"] == "ok"


def test_tenant_alerts_appear_with_traffic_and_go_back_to_ok_when_it_stops():
    engine = engine_at(FakeClock())
    bad = {("tenant.requests", "acme"): 4.0, ("tenant.errors", "acme"): 3.0,
           ("tenant.requests", "zeta"): 10.0, ("tenant.errors", "zeta"): 1.0,
           ("tenant.auth_failures", "(unknown)"): 5.0}
    engine.observe(Sample(1.0, bad))
    assert alert(engine, "tenant_error_spike", tenant="acme")["state"] == "firing"
    assert alert(engine, "tenant_error_spike", tenant="zeta")["state"] == "ok"
    assert alert(engine, "auth_failure_spike", tenant="(unknown)")["state"] == "firing"
    assert engine.num_firing == 2 and engine.snapshot()[0]["state"] == "firing"
    engine.observe(Sample(100.0, bad))  # the same counts a window later: nothing new
    for name, tenant in (("tenant_error_spike", "acme"), ("auth_failure_spike", "(unknown)")):
        quiet = alert(engine, name, tenant=tenant)
        assert quiet["state"] == "ok" and quiet["summary"].startswith("no "), quiet


def test_queue_and_preemption_alerts():
    engine = engine_at(FakeClock())
    engine.observe(Sample(1.0, {"queue_depth": 40.0, "preemptions": 2.0}))
    assert alert(engine, "queue_growing")["state"] == "firing"
    assert alert(engine, "kv_preemptions")["state"] == "firing"
    engine.observe(Sample(40.0, {"queue_depth": 35.0, "preemptions": 2.0}))  # shrinking, no new ones
    assert alert(engine, "queue_growing")["state"] == "ok"
    assert alert(engine, "kv_preemptions")["state"] == "ok"


def test_engine_seconds_split_overlapping_requests():
    clock = FakeClock(0.0)
    engine_time = EngineClock(clock)
    a = engine_time.begin()
    clock.now = 2.0
    b = engine_time.begin()  # a alone for 2 s, then both for 2 s
    clock.now = 4.0
    assert engine_time.end(a) == pytest.approx(3.0)
    clock.now = 5.0
    assert engine_time.end(b) == pytest.approx(2.0)  # 1 s shared, then 1 s alone


def test_cost_ledger_prices_usage_per_day_and_keeps_a_week():
    prices = Prices(per_1k_prompt=2.0, per_1k_cached=0.5, per_1k_generated=8.0, per_engine_second=0.1,
                    currency="EUR")
    ledger = CostLedger(prices)
    ledger.record("acme", Usage(1000, 2000, 500, 10.0), day="2026-01-01")
    ledger.record("acme", Usage(1000, 0, 0, 0.0), day="2026-01-02")
    today = ledger.snapshot(day="2026-01-02")
    assert today["currency"] == "EUR" and today["tenants"]["acme"]["cost"] == pytest.approx(2.0)
    assert ledger.snapshot(day="2026-01-01")["tenants"]["acme"]["cost"] == pytest.approx(2 + 1 + 4 + 1)
    families = {f.name: f for f in ledger.metric_families(day="2026-01-02")}
    assert families["tenant_cost_total"].samples == [("", {"tenant": "acme"}, pytest.approx(10.0))]
    for day in range(3, 12):
        ledger.record("acme", Usage(1, 0, 0, 0.0), day=f"2026-01-{day:02d}")
    assert len(ledger.days) == 7 and "2026-01-01" not in ledger.days


def test_a_drifted_scope_fires_until_its_retrieval_is_back_within_the_baseline():
    engine = engine_at(FakeClock())
    engine.observe(Sample(1.0, {("retrieval.drifted", "acme", "kb"): 1.0}))
    assert alert(engine, "retrieval_drift", tenant="acme", collection="kb")["state"] == "firing"
    engine.observe(Sample(2.0, {}))
    assert alert(engine, "retrieval_drift", tenant="acme", collection="kb")["state"] == "ok"
