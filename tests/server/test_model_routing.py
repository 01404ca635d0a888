"""Routing between model versions and the canary objective, as pure functions (no server)."""

from __future__ import annotations

import math

import pytest

from appliance.server.canary_guard import breach, objective
from appliance.server.config import ServerConfig
from appliance.server.model_routing import Route, RouteRequest, Rule, RuleError, Split, choose, parse_rules
from appliance.server.version_stats import VersionMetrics, WindowSummary

SPLIT = Split("v1", "v2", 0.2)
BOTH = {"v1", "v2"}


def req(session: str, tenant: str = "acme", kind: str = "chat", tokens: int = 10) -> RouteRequest:
    return RouteRequest(tenant, session, kind, tokens)


def test_the_share_of_conversations_on_the_canary_matches_the_split():
    n = 20_000
    on_canary = sum(choose([], SPLIT, req(f"c{i}"), BOTH).version == "v2" for i in range(n))
    sd = math.sqrt(n * 0.2 * 0.8)
    assert abs(on_canary - 0.2 * n) < 4 * sd


def test_a_conversation_stays_on_its_version_and_a_larger_share_only_adds_conversations():
    sessions = [f"user-{i}" for i in range(2000)]
    small = {s for s in sessions if choose([], SPLIT, req(s), BOTH).version == "v2"}
    assert small == {s for s in sessions if choose([], SPLIT, req(s), BOTH).version == "v2"}
    larger = {s for s in sessions if choose([], Split("v1", "v2", 0.5), req(s), BOTH).version == "v2"}
    assert small < larger


def test_named_tenants_go_to_the_canary_and_an_unloaded_canary_takes_nothing():
    split = Split("v1", "v2", 0.0, frozenset({"beta"}))
    assert choose([], split, req("x", tenant="beta"), BOTH) == Route("v2", "canary")
    assert choose([], split, req("x", tenant="acme"), BOTH) == Route("v1", "live")
    assert choose([], Split("v1", "v2", 1.0), req("x"), {"v1"}) == Route("v1", "live")


def test_the_first_matching_rule_wins_before_the_split():
    rules = [Rule("long", "v3", min_prompt_tokens=1000), Rule("rag-acme", "v2", tenant="acme", kind="rag")]
    avail = {"v1", "v2", "v3"}
    assert choose(rules, SPLIT, req("x", kind="rag", tokens=2000), avail) == Route("v3", "rule:long")
    assert choose(rules, SPLIT, req("x", kind="rag", tokens=10), avail) == Route("v2", "rule:rag-acme")
    assert choose(rules, Split("v1"), req("x", kind="chat"), avail) == Route("v1", "live")
    # A rule whose version is not loaded is passed over.
    assert choose(rules, Split("v1"), req("x", kind="rag", tokens=2000), {"v1", "v2"}).version == "v2"


@pytest.mark.parametrize(("raw", "param"), [
    ("nope", "rules"), ([{"version": "v1"}], "name"),
    ([{"name": "a", "version": "v1", "kind": "video"}], "kind"),
    ([{"name": "a", "version": "v1", "min_prompt_tokens": -1}], "min_prompt_tokens"),
    ([{"name": "a", "version": "v1", "colour": "red"}], "colour"),
    ([{"name": "a", "version": "v1"}, {"name": "a", "version": "v2"}], "name"),
])
def test_bad_rules_name_the_field(raw, param):
    with pytest.raises(RuleError) as err:
        parse_rules(raw)
    assert err.value.param == param


def test_the_canary_objective_breaks_on_errors_or_slow_first_tokens_once_enough_requests_came():
    goal = objective(ServerConfig(), {"min_requests": 4, "max_ttft_p90_s": 2.0})
    assert goal["max_error_rate"] == ServerConfig().canary_max_error_rate
    assert breach(goal, WindowSummary(60, 3, 3, 9.0, 9.0, None)) is None  # too few requests yet
    assert "error rate 0.50" in breach(goal, WindowSummary(60, 4, 2, 0.1, 0.1, None))
    assert "TTFT p90 3.00 s > 2 s" in breach(goal, WindowSummary(60, 4, 0, 1.0, 3.0, None))
    assert breach(goal, WindowSummary(60, 40, 1, 0.5, 1.5, None)) is None


def test_the_version_window_forgets_old_requests():
    metrics = VersionMetrics(window_s=60)
    metrics.finished("v2", 500, None, None, now=0.0)
    metrics.finished("v2", 200, 0.3, 0.05, now=100.0)
    metrics.finished("v2", 200, 0.5, 0.05, now=110.0)
    window = metrics.summary("v2", now=120.0)
    assert (window.num_requests, window.num_errors, window.ttft_p90_s) == (2, 0, 0.5)
    assert metrics.snapshot("v2")["errors_total"] == 1
