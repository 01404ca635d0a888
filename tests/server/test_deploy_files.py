"""The Prometheus rules and the Grafana dashboard under deploy/ match the server they are for.

Every `appliance:` series they name is exported by a real server's /metrics; every recorded
`appliance_slo:` series they read is recorded by the rules file; the rules file holds the same alerts
as the server's own rules at the default settings (names, severities, burn windows, thresholds).
"""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import pytest
import yaml

from appliance.server.alert_rules import BurnRateRule, rules_from_config
from appliance.server.config import ServerConfig
from appliance.server.slo import parse_windows
from tests.server.helpers import ServerProcess

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
RULES = DEPLOY / "prometheus" / "appliance-rules.yml"
DASHBOARD = DEPLOY / "grafana" / "appliance-dashboard.json"
SERIES_RE = re.compile(r"\b(appliance(?:_slo)?:[A-Za-z0-9_:]+)")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


@pytest.fixture(scope="module")
def rules() -> list[dict]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


@pytest.fixture(scope="module")
def dashboard_exprs() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    return [t["expr"] for panel in doc["panels"] for t in panel.get("targets", [])]


def exported_series(server: ServerProcess) -> set[str]:
    """Names /metrics declares (a histogram's _bucket/_sum/_count included), samples or not yet."""
    with urllib.request.urlopen(server.url + "/metrics", timeout=30) as resp:
        text = resp.read().decode()
    names = set()
    for line in text.splitlines():
        match = re.match(r"^# TYPE (\S+) (\w+)$", line)
        if match:
            name, kind = match.groups()
            names.add(name)
            if kind == "histogram":
                names.update(name + suffix for suffix in HISTOGRAM_SUFFIXES)
    return names


def test_every_series_the_deploy_files_name_exists(server, rules, dashboard_exprs):
    exported = exported_series(server)
    recorded = {rule["record"] for rule in rules if "record" in rule}
    exprs = [rule["expr"] for rule in rules] + dashboard_exprs
    named = {name for expr in exprs for name in SERIES_RE.findall(expr)}
    assert named, "no appliance series found in the deploy files"
    missing = sorted(n for n in named if n not in exported and n not in recorded)
    assert not missing, f"named in deploy/ but not in /metrics nor recorded: {missing}"
    assert all(n.startswith("appliance_slo:") for n in recorded), recorded
    assert recorded <= named, f"recorded but never read: {sorted(recorded - named)}"


def test_the_rules_file_holds_the_servers_alerts_at_the_default_settings(rules):
    config = ServerConfig().validate()
    in_server = {(r.name, r.severity, r.window.label if isinstance(r, BurnRateRule) else None)
                 for r in rules_from_config(config)}
    in_file = {(r["alert"], r["labels"]["severity"], r["labels"].get("window"))
               for r in rules if "alert" in r}
    assert in_file == in_server
    ratio_exprs = {r["record"]: r["expr"] for r in rules if "record" in r}
    assert f'le="{config.slo_ttft_s!r}"' in ratio_exprs["appliance_slo:ttft_bad_ratio:rate5m"]
    assert f'le="{config.slo_queue_wait_s!r}"' in ratio_exprs["appliance_slo:queue_wait_bad_ratio:rate5m"]
    for rule in (r for r in rules if r.get("alert", "").endswith("_burn_rate")):
        objective = rule["alert"].removesuffix("_burn_rate")
        target = getattr(config, f"slo_{objective}_target")
        short, long = rule["labels"]["window"].split("/")
        burn = next(w.burn_rate for w in parse_windows(config.slo_burn_windows)
                    if w.label == rule["labels"]["window"])
        budget = f"{burn:g} * {round(1 - target, 6):g}"
        assert f"appliance_slo:{objective}_bad_ratio:rate{long} >= {budget}" in rule["expr"], rule
        assert f"appliance_slo:{objective}_bad_ratio:rate{short} >= {budget}" in rule["expr"], rule
        assert f">= {config.slo_min_requests}" in rule["expr"], rule


def test_the_dashboard_is_a_grafana_dashboard_on_a_prometheus_datasource():
    doc = json.loads(DASHBOARD.read_text())
    assert doc["uid"] and doc["title"] and doc["schemaVersion"] >= 36
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    datasource = variables["datasource"]
    assert datasource["type"] == "datasource" and datasource["query"] == "prometheus"
    ids = [panel["id"] for panel in doc["panels"]]
    assert len(ids) == len(set(ids))
    for panel in doc["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        assert all(t["expr"].strip() for t in panel["targets"]), panel["title"]

