"""The dashboard's pure parts: stats parsing, latency quantiles, the KV bar, charts, forms, formats."""

from __future__ import annotations

import math

import pytest

from tests.tui.synthetic import metrics_text, stats_doc
from tui import format as fmt
from tui.forms import find_files, name_error
from tui.latency import TPOT, TTFT, Histogram, LatencyWindow, parse_histograms
from tui.stats import KvStats, collection_row, parse_stats, tenant_rows
from tui.widgets.collections_table import status_text
from tui.widgets.kv_panel import bar_widths
from tui.widgets.timeseries import bar_rows

# --- /admin/stats ------------------------------------------------------------------------------


def test_parse_stats_reads_every_panel_field():
    s = parse_stats(stats_doc(0))
    assert (s.kv.num_blocks, s.kv.used_blocks, s.kv.cached_blocks, s.kv.free_blocks) == (2048, 96, 120, 1832)
    assert s.requests.num_finished == 2509 and s.requests.preemptions_total == 2
    assert s.throughput.prompt_tokens_per_s == 820.0 and s.admission.max_queued_requests == 256


@pytest.mark.parametrize(("path", "value", "expected"), [
    (("kv",), None, "no 'kv' object"),
    (("kv", "used_blocks"), ..., "'used_blocks'"),
    (("kv", "used_blocks"), "12", "'used_blocks' is '12', not a number"),
    (("requests", "running"), True, "not a number"),
    (("admission", "paused"), ..., "'paused'"),
])
def test_parse_stats_names_what_is_wrong(path, value, expected):
    doc = stats_doc(0)
    holder = doc
    for key in path[:-1]:
        holder = holder[key]
    if value is ...:
        del holder[path[-1]]
    else:
        holder[path[-1]] = value
    with pytest.raises(ValueError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        parse_stats(doc)
    with pytest.raises(ValueError, match="not a JSON object"):
        parse_stats(["not", "a", "dict"])


def test_tenant_rows_join_usage_and_quota():
    usage = {"acme": {"requests": 3, "prompt_tokens": 100, "cached_tokens": 40, "completion_tokens": 20,
                      "tokens_today": 50}, "ghost": {"requests": 1}}
    tenants = [{"name": "acme", "token_quota_per_day": 200}, {"name": "idle", "token_quota_per_day": None}]
    rows = {r.name: r for r in tenant_rows(usage, tenants)}
    assert list(rows) == ["acme", "ghost", "idle"]
    assert rows["acme"].tokens == 120 and rows["acme"].quota_used == 0.25
    assert rows["idle"].requests == 0 and rows["idle"].quota_used is None
    assert rows["ghost"].requests == 1


def test_collection_status_counts_what_is_not_ready():
    docs = [{"status": "ready"}, {"status": "failed"}, {"status": "ingesting"}, {"status": "failed"}]
    row = collection_row({"name": "c", "documents": 4, "chunks": 9}, docs)
    assert status_text(row) == "2 failed, 1 ingesting"
    assert status_text(row, "uploading 1/3") == "uploading 1/3, 2 failed, 1 ingesting"
    ready = collection_row({"name": "c", "documents": 1, "chunks": 2}, [{"status": "ready"}])
    assert status_text(ready) == "ready"
    assert status_text(collection_row({"name": "e", "documents": 0, "chunks": 0}, [])) == "empty"


# --- latency -----------------------------------------------------------------------------------


def test_histogram_quantile_interpolates_inside_the_bucket():
    # 10 observations: 2 in (0, 0.1], 6 in (0.1, 0.5], 2 in (0.5, 1.0]
    h = Histogram((0.1, 0.5, 1.0, math.inf), (2, 8, 10, 10))
    assert h.quantile(0.5) == pytest.approx(0.1 + 0.4 * (5 - 2) / 6)
    assert h.quantile(0.95) == pytest.approx(0.5 + 0.5 * (9.5 - 8) / 2)
    assert Histogram((0.1, math.inf), (0, 4)).quantile(0.5) == 0.1  # only +Inf: its lower bound
    assert Histogram((0.1, math.inf), (0, 0)).quantile(0.5) is None


def test_latency_window_covers_the_last_minute_only():
    window = LatencyWindow(window_s=60.0)

    def scrape(n_fast: int, n_slow: int) -> dict[str, Histogram]:
        return {TTFT: Histogram((0.1, 1.0, math.inf), (n_fast, n_fast + n_slow, n_fast + n_slow))}

    window.add(0.0, scrape(0, 0))
    window.add(30.0, scrape(100, 0))  # 100 fast requests in the first minute
    window.add(70.0, scrape(100, 10))  # then 10 slow ones
    window.add(95.0, scrape(100, 20))
    q = window.quantiles(TTFT)
    # The baseline is the scrape at t=30 (the newest at least 60 s old): only the 20 slow requests count.
    assert q.num_samples == 20 and q.p50 > 0.1 and q.p95 > 0.1
    window.add(100.0, scrape(0, 0))  # the server restarted: counters went back
    assert window.quantiles(TTFT).num_samples == 0
    window.add(101.0, scrape(5, 0))
    assert window.quantiles(TTFT).num_samples == 5
    assert window.quantiles(TPOT).num_samples == 0


def test_parse_histograms_reads_the_prometheus_text():
    hists = parse_histograms(metrics_text(2))
    assert hists[TTFT].bounds[-1] == math.inf and hists[TTFT].num_samples == 40
    assert hists[TPOT].num_samples == 40
    assert parse_histograms("# nothing here\nfoo_bucket{le=\"1\"} 3\n") == {}


# --- drawing -----------------------------------------------------------------------------------


def _kv(used: int, cached: int, total: int = 100) -> KvStats:
    return KvStats(16, total, used, cached, total - used - cached, used / total, 0, 0)


@pytest.mark.parametrize(("used", "cached", "width"), [(0, 0, 30), (1, 1, 30), (50, 50, 30), (99, 1, 7),
                                                       (30, 20, 36), (0, 100, 5), (1, 0, 1)])
def test_bar_widths_fill_the_width_and_show_every_nonzero_share(used, cached, width):
    u, c, f = bar_widths(_kv(used, cached), width)
    assert u + c + f == width and min(u, c, f) >= 0
    if width >= 2:
        assert (u > 0) == (used > 0) and (c > 0) == (cached > 0)


def test_bar_rows_are_right_aligned_and_scaled_from_zero():
    rows = bar_rows([0.0, 0.5, 1.0], width=5, height=2, top=1.0)
    assert rows == ["    █", "   ██"]  # zero draws nothing; 0.5 fills the bottom row
    assert bar_rows([0.001], width=3, height=1, top=1.0) == ["  ▁"]  # above zero is always visible
    assert bar_rows([], width=3, height=1, top=0.0) == ["   "]


# --- forms and formats -------------------------------------------------------------------------


def test_name_rules_match_the_server():
    assert name_error("acme-1.x_y", "tenant") is None
    for bad in ("", " ", "-x", "a b", "é", "x" * 65, "a/b"):
        assert name_error(bad, "tenant") is not None, bad


def test_find_files_walks_directories_and_reports_the_first_problem(tmp_path):
    (tmp_path / "d" / ".hidden").mkdir(parents=True)
    (tmp_path / "d" / "a.md").write_text("a")
    (tmp_path / "d" / "b.bin").write_text("b")
    (tmp_path / "d" / ".hidden" / "c.txt").write_text("c")
    (tmp_path / "with space.txt").write_text("s")
    files, error = find_files(f'{tmp_path / "d"} "{tmp_path / "with space.txt"}"')
    assert error is None
    assert [f.path.name for f in files] == ["a.md", "with space.txt"]
    assert all(f.source == str(f.path) and f.path.is_absolute() for f in files)
    assert find_files(str(tmp_path / "nope"))[1].startswith("no such file or directory")
    assert find_files("")[1] == "enter a file or directory path"


def test_formats():
    assert fmt.count(99_999) == "99,999" and fmt.count(123_456) == "123k" and fmt.count(1_234_567) == "1.2M"
    assert fmt.seconds(0.0451) == "45 ms" and fmt.seconds(2.5) == "2.50 s" and fmt.seconds(None) == fmt.DASH
    assert fmt.duration(59) == "59s" and fmt.duration(3725) == "1h02m" and fmt.duration(90_000) == "1d01h"
    assert fmt.percent(0.1234) == "12.3%" and fmt.percent(None) == fmt.DASH


def test_kv_panel_shows_chunk_hits_only_where_chunk_reuse_runs():
    from tui.widgets.kv_panel import hits_text

    doc = stats_doc(0)
    plain = parse_stats(doc).prefix
    assert "chunk" not in hits_text(plain).plain
    doc["chunk_cache"] = {"hit_tokens": 8120, "recomputed_tokens": 960, "blocks": 96}
    chunks = parse_stats(doc).prefix
    assert (chunks.chunk_hit_tokens, chunks.chunk_recomputed_tokens, chunks.chunk_blocks) == (8120, 960, 96)
    assert "chunk hits" in hits_text(chunks).plain and "96 blocks" in hits_text(chunks).plain
