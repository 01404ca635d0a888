"""The soak benchmark, small: its report against the session server, and its catalogue of bad requests.

The full soak (1,000 requests at 64 streams) is a benchmark, not a test; here 20 requests at 4
streams check that the load generator counts what happened and that the server ends idle with no
KV block held. Every invalid kind is also sent once, so a wrong expectation in the catalogue (which
would show as an "unexpected error" in a real soak) fails here first.
"""

from __future__ import annotations

import argparse
import json

from appliance.bench.soak import add_arguments, invalid_cases, print_report, run_plan, soak
from tests.server.helpers import ADMIN_KEY


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_small_soak_reports_no_errors_and_no_leaks(server, run, capsys):
    args = _args("--num-requests", "20", "--concurrency", "4", "--max-tokens", "3", "--workload", "short",
                 "--warmup-requests", "4")
    report = run(soak(server.url, ADMIN_KEY, args, server.proc.pid))
    assert report.num_requests == 20 and report.concurrency == 4
    assert report.unexpected_errors == 0, report.unexpected_examples
    assert report.disconnected == 4  # 20% of the requests hung up after their first token
    assert sum(report.expected_4xx.values()) == 2  # 10% invalid, each refused as its kind expects
    assert report.valid_ok == 18
    assert report.leaked_blocks == 0 and report.running_after == 0 and report.waiting_after == 0
    assert report.rss_before_kib > 0 and report.rss_after_kib > 0
    assert report.ttft_s["p99"] is not None and report.ttft_s["p99"] >= report.ttft_s["p50"] > 0
    assert report.passed
    print_report(report)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    parsed = json.loads(last)["soak"]
    assert parsed["unexpected_errors"] == 0 and parsed["leaked_blocks"] == 0 and parsed["passed"] is True
    assert {"rss_growth_pct", "ttft_s", "expected_4xx", "disconnected"} <= set(parsed)
    assert server.health() == 200


def test_every_invalid_kind_gets_the_status_it_expects(server, run):
    cases = invalid_cases(server.model, server.get_json("/v1/models")["data"][0]["max_model_len"])
    assert len({c.kind for c in cases}) == len(cases) >= 25
    outcomes, _ = run(run_plan(server.url, ADMIN_KEY, cases, 4))
    assert [o.problem for o in outcomes if o.problem] == []
    assert sorted(o.kind for o in outcomes) == sorted(c.kind for c in cases)
    assert server.health() == 200
