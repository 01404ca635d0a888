"""Prometheus exposition (text format 0.0.4) with vLLM's metric meanings under the `appliance:` prefix.

Engine-owned numbers (KV usage, running/waiting, prefix-cache tokens, preemptions) are read from the
engine's stats at scrape time; request-level numbers (TTFT, TPOT, e2e, queue time, token counts,
finish reasons) are observed by the handlers; answer quality, retrieval drift and injection flags
come from quality_stats. A small hand-written registry: no extra dependency.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from appliance.bench.stats import nearest_rank
from appliance.server.quality_stats import MetricFamily, QualityStats

if TYPE_CHECKING:
    from engine import EngineStats
    from engine.async_engine import KvFootprint

PREFIX = "appliance:"
LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                   10.0, 20.0, 40.0, 80.0, 160.0)
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)


def _labels(pairs: tuple[tuple[str, str], ...]) -> str:
    if not pairs:
        return ""
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in pairs)
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if isinstance(value, float) else str(value)


@dataclass(slots=True)
class Counter:
    name: str
    help: str
    values: dict[tuple, float] = field(default_factory=dict)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        self.values[key] = self.values.get(key, 0.0) + amount

    def render(self) -> list[str]:
        full = PREFIX + self.name
        lines = [f"# HELP {full}_total {self.help}", f"# TYPE {full}_total counter"]
        lines += [f"{full}_total{_labels(k)} {_num(v)}" for k, v in sorted(self.values.items())]
        return lines


@dataclass(slots=True)
class Histogram:
    name: str
    help: str
    buckets: tuple[float, ...] = LATENCY_BUCKETS
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    num: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.buckets) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.num += 1

    def num_at_most(self, bound: float) -> int:
        """Observations <= bound, a bucket bound (what the `le` bucket counts)."""
        return sum(self.counts[:self.buckets.index(bound) + 1])

    def render(self) -> list[str]:
        full = PREFIX + self.name
        lines = [f"# HELP {full} {self.help}", f"# TYPE {full} histogram"]
        running = 0
        for bound, count in zip((*self.buckets, math.inf), self.counts, strict=True):
            running += count
            lines.append(f'{full}_bucket{{le="{_num(float(bound))}"}} {running}')
        lines += [f"{full}_sum {_num(self.total)}", f"{full}_count {self.num}"]
        return lines


class Window:
    """Recent observations (last `max_age_s`) for percentiles in /admin/stats."""

    def __init__(self, max_age_s: float = 300.0, max_len: int = 4096) -> None:
        self.max_age_s = max_age_s
        self.items: deque[tuple[float, float]] = deque(maxlen=max_len)

    def add(self, value: float, now: float | None = None) -> None:
        self.items.append((now if now is not None else time.monotonic(), value))

    def percentiles(self, now: float | None = None) -> dict:
        now = now if now is not None else time.monotonic()
        values = sorted(v for t, v in self.items if now - t <= self.max_age_s)
        if not values:
            return {"p50": None, "p90": None, "p99": None, "num_samples": 0}
        return {"p50": nearest_rank(values, 0.50), "p90": nearest_rank(values, 0.90),
                "p99": nearest_rank(values, 0.99), "num_samples": len(values)}


class RateWindow:
    """Token rates over a recent window from samples of the engine's monotonic counters."""

    def __init__(self, window_s: float = 10.0) -> None:
        self.window_s = window_s
        self.samples: deque[tuple[float, int, int]] = deque()

    def sample(self, prompt_total: int, generation_total: int, now: float | None = None) -> None:
        now = now if now is not None else time.monotonic()
        self.samples.append((now, prompt_total, generation_total))
        while len(self.samples) > 2 and now - self.samples[1][0] >= self.window_s:
            self.samples.popleft()

    def rates(self) -> dict:
        if len(self.samples) < 2:
            return {"prompt_tokens_per_s": 0.0, "generation_tokens_per_s": 0.0, "window_s": 0.0}
        (t0, p0, g0), (t1, p1, g1) = self.samples[0], self.samples[-1]
        span = max(t1 - t0, 1e-9)
        return {"prompt_tokens_per_s": (p1 - p0) / span, "generation_tokens_per_s": (g1 - g0) / span,
                "window_s": span}


class ServerMetrics:
    def __init__(self) -> None:
        self.lock = threading.Lock()  # observations come from the loop; scrapes may render in a thread
        self.request_success = Counter("request_success", "Finished requests by finish reason.")
        self.prompt_tokens = Counter("prompt_tokens", "Prompt tokens of requests (prefix hits included).")
        self.generation_tokens = Counter("generation_tokens", "Generated tokens.")
        self.http_requests = Counter("http_requests", "HTTP requests by route and status.")
        self.rejections = Counter("requests_rejected", "Requests refused before the engine, by reason.")
        self.tenant_requests = Counter("tenant_requests", "Requests by tenant and final HTTP status "
                                       "(tenant '(unknown)': the key was not recognised).")
        self.ingest_documents = Counter("ingest_documents", "Documents uploaded, by result status.")
        self.ingest_chunks = Counter("ingest_chunks", "Chunks written by uploads.")
        self.ttft = Histogram("time_to_first_token_seconds", "Time to first token.")
        self.tpot = Histogram("time_per_output_token_seconds", "Mean time per output token after the first.",
                              TPOT_BUCKETS)
        self.e2e = Histogram("e2e_request_latency_seconds", "End-to-end request latency.")
        self.queue = Histogram("request_queue_time_seconds", "Time a request waited before its first step.")
        self.retrieval = Histogram("retrieval_latency_seconds", "Retrieval latency (embed + search).")
        self.windows = {name: Window() for name in ("ttft_s", "tpot_s", "e2e_s", "queue_s", "retrieval_s")}
        self.rates = RateWindow()
        self.quality = QualityStats()

    def observe_request(self, ttft: float | None, e2e: float, queue: float | None,
                        num_output_tokens: int, finish_reason: str) -> None:
        with self.lock:
            self.request_success.inc(finished_reason=finish_reason)
            self.e2e.observe(e2e)
            self.windows["e2e_s"].add(e2e)
            if ttft is not None:
                self.ttft.observe(ttft)
                self.windows["ttft_s"].add(ttft)
                if num_output_tokens > 1:
                    tpot = (e2e - ttft) / (num_output_tokens - 1)
                    self.tpot.observe(tpot)
                    self.windows["tpot_s"].add(tpot)
            if queue is not None:
                self.queue.observe(queue)
                self.windows["queue_s"].add(queue)

    def observe_retrieval(self, seconds: float) -> None:
        with self.lock:
            self.retrieval.observe(seconds)
            self.windows["retrieval_s"].add(seconds)

    def latency_summary(self) -> dict:
        with self.lock:
            return {name: window.percentiles() for name, window in self.windows.items()}

    def render(self, stats: EngineStats, num_queued: int) -> str:
        with self.lock:
            lines = _engine_lines(stats, num_queued)
            for metric in (self.request_success, self.prompt_tokens, self.generation_tokens,
                           self.http_requests, self.tenant_requests, self.rejections, self.ingest_documents,
                           self.ingest_chunks,
                           self.ttft, self.tpot, self.e2e, self.queue, self.retrieval):
                lines += metric.render()
        for family in self.quality.metric_families():
            lines += _family_lines(family)
        return "\n".join(lines) + "\n"


def _family_lines(family: MetricFamily) -> list[str]:
    full = PREFIX + family.name
    lines = [f"# HELP {full} {family.help}", f"# TYPE {full} {family.kind}"]
    lines += [f"{full}{suffix}{_labels(tuple(sorted(pairs.items())))} {_num(value)}"
              for suffix, pairs, value in family.samples]
    return lines


def render_families(families: list[MetricFamily]) -> str:
    """Families other owners compute at scrape time (cost, the KV footprint), in exposition format."""
    return "".join(line + "\n" for family in families for line in _family_lines(family))


def kv_footprint_families(fp: KvFootprint) -> list[MetricFamily]:
    def gauge(name: str, help_: str, value: float) -> MetricFamily:
        return MetricFamily(name, "gauge", help_, [("", {}, value)])

    return [
        gauge("kv_cache_waste_perc", "Share of the KV slots held by live requests that no token fills yet "
              "(0-1).", fp.waste_perc),
        gauge("kv_cache_memory_share", "The KV pool's share of the engine's memory (weights + KV pool).",
              fp.memory_share),
        gauge("kv_cache_bytes", "Bytes of the KV pool.", fp.kv_bytes),
        gauge("model_weight_bytes", "Bytes of the model's weights.", fp.weight_bytes),
    ]


def _engine_lines(s: EngineStats, num_queued: int) -> list[str]:
    def gauge(name: str, help_: str, value: float) -> list[str]:
        full = PREFIX + name
        return [f"# HELP {full} {help_}", f"# TYPE {full} gauge", f"{full} {_num(value)}"]

    def counter(name: str, help_: str, value: float) -> list[str]:
        full = f"{PREFIX}{name}_total"
        return [f"# HELP {full} {help_}", f"# TYPE {full} counter", f"{full} {_num(value)}"]

    return [
        *gauge("num_requests_running", "Requests in the engine's running batch.", s.num_running),
        *gauge("num_requests_waiting", "Requests waiting in the engine's queue.", s.num_waiting),
        *gauge("num_requests_queued_server", "Admitted requests not yet producing tokens.", num_queued),
        *gauge("kv_cache_usage_perc", "Share of KV blocks used by live requests (0-1).", s.usage_perc),
        *gauge("kv_cache_used_blocks", "KV blocks referenced by live requests.", s.used_blocks),
        *gauge("kv_cache_cached_blocks", "Idle KV blocks holding a reusable prefix.", s.cached_blocks),
        *gauge("kv_cache_free_blocks", "KV blocks holding nothing.", s.free_blocks),
        *counter("prefix_cache_queries", "Prompt tokens looked up in the prefix cache.",
                 s.prefix_query_tokens),
        *counter("prefix_cache_hits", "Prompt tokens found in the prefix cache.", s.prefix_hit_tokens),
        *counter("chunk_cache_hits", "Prompt tokens whose KV was moved in from stored chunks.",
                 s.chunk_hit_tokens),
        *counter("chunk_cache_recomputed", "Tokens of reused chunks computed again in their new context.",
                 s.chunk_recomputed_tokens),
        *counter("chunk_cache_queries", "Chunk tokens of kv_reuse chunks prompts.", s.chunk_query_tokens),
        *counter("chunk_cache_prefix_hits", "Chunk tokens of kv_reuse chunks prompts that were prefix hits.",
                 s.chunk_prefix_hit_tokens),
        *gauge("chunk_cache_blocks", "KV blocks holding stored chunks.", s.chunk_blocks),
        *counter("num_preemptions", "Sequences preempted for lack of KV blocks.", s.num_preemptions),
        *counter("engine_prompt_tokens_computed", "Prompt tokens computed (prefix hits excluded).",
                 s.prompt_tokens_total),
        *counter("engine_steps", "Engine steps.", s.num_steps),
    ]
