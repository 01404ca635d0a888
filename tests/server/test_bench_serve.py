"""The serving benchmark's load generator against the real server, and its summary arithmetic."""

from __future__ import annotations

import sys

import pytest

from appliance.bench.serve import Sample, ServerProcess, Workload, run_load, short_workload, summarize
from appliance.bench.stats import percentiles
from tests.server.helpers import ADMIN_KEY


def test_closed_loop_and_poisson_loads_measure_every_request(server, run):
    workload = short_workload(server.model, 6, 3, seed=1)
    for concurrency, rate in ((3, None), (None, 50.0)):
        samples, duration = run(run_load(server.url, ADMIN_KEY, workload, concurrency, rate, seed=1))
        assert len(samples) == 6 and all(s.ok for s in samples), [s.error for s in samples]
        assert all(s.output_tokens == 3 and s.ttft is not None and s.ttft <= s.e2e for s in samples)
        assert all(len(s.itl) >= 1 for s in samples)
        row = summarize("x", samples, duration)
        assert row["completed"] == 6 and row["failed"] == 0 and row["output_tokens"] == 18


def test_text_completion_streams_of_token_ids_are_measured(server, run):
    """The stream shape `bench peers` reads from llama-server: /v1/completions, `choices[0].text`."""
    bodies = [{"model": server.model, "prompt": [504, 3458, 314, 260], "max_tokens": 4, "temperature": 0.0,
               "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}] * 2
    samples, _ = run(run_load(server.url, ADMIN_KEY, Workload("completion", "/v1/completions", bodies), 2,
                              None, seed=0))
    assert all(s.ok and s.output_tokens == 4 and s.prompt_tokens == 4 and len(s.itl) >= 1 for s in samples)


def test_failed_requests_are_counted_not_raised(server, run):
    workload = short_workload("no-such-model", 2, 2, seed=0)
    samples, duration = run(run_load(server.url, ADMIN_KEY, workload, 2, None, seed=0))
    row = summarize("bad", samples, duration)
    assert row["failed"] == 2 and row["errors"] == ["HTTP 404"]


def test_percentiles_and_summary_arithmetic():
    assert percentiles([]) == {"mean": None, "p50": None, "p90": None, "p95": None, "p99": None}
    stats = percentiles([float(i) for i in range(1, 101)])
    assert stats["p50"] == 50.0 and stats["p90"] == 90.0 and stats["p99"] == 99.0 and stats["mean"] == 50.5
    assert stats["p95"] == 95.0
    assert percentiles([3.0, 1.0, 2.0]) == {"mean": 2.0, "p50": 2.0, "p90": 3.0, "p95": 3.0, "p99": 3.0}
    samples = [Sample(ok=True, start=0.0, ttft=1.0, e2e=3.0, itl=[1.0, 1.0], output_tokens=3,
                      prompt_tokens=10)]
    row = summarize("one", samples, 2.0)
    assert row["tpot_s"]["mean"] == 1.0 and row["output_token_throughput"] == 1.5
    assert row["total_token_throughput"] == 6.5


def test_a_server_that_exits_while_loading_is_reported_with_the_end_of_its_log(run):
    server = ServerProcess("dies")
    server.start([sys.executable, "-c", "import sys; print('cannot load the model'); sys.exit(3)"], {})
    try:
        ended = r"exited \(status 3\); its log ended with: cannot load the model"
        with pytest.raises(RuntimeError, match=ended):
            run(server.wait_ready(timeout_s=60))
    finally:
        server.close()


def test_recurring_chunk_queries_favour_popular_paragraphs():
    from collections import Counter

    from appliance.bench.serve import SQUAD
    from appliance.bench.serve_kv_reuse import recurring_chunk_bodies

    if not (SQUAD / "questions.jsonl").is_file():
        pytest.skip("needs ../shared/data/squad-rag")
    bodies = recurring_chunk_bodies("kb", 400, 8, seed=3)
    assert bodies == recurring_chunk_bodies("kb", 400, 8, seed=3)  # seeded
    assert all(3 <= b["top_k"] <= 5 and b["collection"] == "kb" and b["max_tokens"] == 8 for b in bodies)
    counts = Counter(b["query"] for b in bodies)
    # Zipf by paragraph: some questions repeat, and the draw is far from uniform over ~1,300 questions
    assert counts.most_common(1)[0][1] >= 5 and len(counts) < 300
