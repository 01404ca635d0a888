"""A tiny real aiohttp server that answers the dashboard's reads with fixed, scripted numbers.

Snapshots need stats that never change from run to run; serving them over real HTTP keeps the
dashboard's client, poller and parsing on their real path. The n-th /admin/stats answer is step n
of a fixed script (the last step repeats), so a test that polls a known number of times always
draws the same history. Shapes follow appliance/server/admin_routes.py exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

from aiohttp import web

from tests.threaded_app import ThreadedApp

KEY = "synthetic-admin-key"
# A fixed port below Linux's ephemeral range (32768+), so no test's free_port() can take it: the URL
# is on screen, and the snapshots must not change from run to run.
PORT = 29741
NUM_BLOCKS = 2048
QUERY_TOKENS, HIT_TOKENS = 1_598_741, 1_169_108
USED = (96, 130, 188, 240, 310, 402, 455, 380, 344, 420, 512, 604, 660, 590, 548, 620)
CACHED = (120, 150, 190, 260, 300, 330, 360, 420, 480, 500, 520, 560, 600, 640, 700, 712)
PROMPT_TPS = (820.0, 1460.5, 2210.0, 1980.3, 2650.7, 3120.0, 2890.4, 2405.1, 2760.9, 3305.2, 3540.0,
              3410.8, 2980.6, 3150.2, 3620.4, 3482.6)
GEN_TPS = (110.2, 180.4, 236.0, 251.3, 298.8, 320.1, 315.6, 290.0, 305.2, 342.7, 360.4, 351.9, 330.2,
           347.5, 372.8, 366.4)
TTFT_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0, 160.0)
TTFT_PER_STEP = (0, 0, 0, 0, 1, 2, 4, 9, 3, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)  # 20 requests per step
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
TPOT_PER_STEP = (0, 2, 9, 6, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
_DEFAULTS = {"max_concurrent_requests": None, "max_queued_tokens": None, "weight": 1.0}
TENANTS = [
    {"name": "acme", "token_quota_per_day": 2_000_000, "requests_per_minute": 600, **_DEFAULTS,
     "weight": 2.0},
    {"name": "admin", "token_quota_per_day": None, "requests_per_minute": None, **_DEFAULTS},
    {"name": "globex", "token_quota_per_day": 500_000, "requests_per_minute": 120, **_DEFAULTS,
     "max_concurrent_requests": 8},
    {"name": "initech", "token_quota_per_day": None, "requests_per_minute": None, **_DEFAULTS},
]
USAGE = {
    "acme": {"requests": 1842, "prompt_tokens": 1_204_331, "cached_tokens": 917_204,
             "completion_tokens": 98_112, "tokens_today": 402_118},
    "admin": {"requests": 12, "prompt_tokens": 4_410, "cached_tokens": 1_024, "completion_tokens": 377,
              "tokens_today": 4_787},
    "globex": {"requests": 655, "prompt_tokens": 390_210, "cached_tokens": 250_880,
               "completion_tokens": 41_930, "tokens_today": 431_140},
}
# /admin/traces: a trace list recorded from a real server (newest first), replayed as is.
RECORDED_TRACES = json.loads((Path(__file__).with_name("traces_recorded.json")).read_text())["traces"]
# /admin/stats "quality": recorded from a real server after RAG traffic on three collections of two
# tenants (one drifted, one steady, one still filling its baseline; a poisoned note), replayed as is.
RECORDED_QUALITY = json.loads((Path(__file__).with_name("quality_recorded.json")).read_text())
PRICES = {"per_1k_prompt_tokens": 0.01, "per_1k_cached_tokens": 0.002, "per_1k_generated_tokens": 0.03,
          "per_engine_second": 0.0005}
COST_TODAY = {"acme": (88_410, 271_338, 42_370, 1_804.2), "admin": (3_386, 1_024, 377, 12.5),
              "globex": (139_330, 250_880, 41_930, 2_210.9)}  # prompt, cached, generated, engine-s


def _cost(prompt: int, cached: int, generated: int, engine_s: float) -> dict:
    cost = (prompt * PRICES["per_1k_prompt_tokens"] + cached * PRICES["per_1k_cached_tokens"]
            + generated * PRICES["per_1k_generated_tokens"]) / 1000 + engine_s * PRICES["per_engine_second"]
    return {"prompt_tokens": prompt, "cached_tokens": cached, "generated_tokens": generated,
            "engine_seconds": engine_s, "cost": cost}


COST = {"currency": "USD", "day": "2026-01-01", "prices": PRICES,
        "tenants": {name: _cost(*usage) for name, usage in COST_TODAY.items()}}
# /admin/alerts: the rule instances of a real server, all ok (the main screen shows no alerts strip).
CALM_ALERTS = [{**alert, "state": "ok", "since": "2026-01-01T00:00:00+00:00"} for alert in json.loads(
    (Path(__file__).with_name("alerts_recorded.json")).read_text())["alerts"]]
COLLECTIONS = {
    "handbook": [("ready", 14), ("ready", 9), ("ready", 22)],
    "manuals": [("ready", 31), ("ready", 40), ("ingesting", 0), ("failed", 0)],
    "release-notes": [("ready", 5)],
}


def stats_doc(step: int) -> dict:
    i = min(step, len(USED) - 1)
    used, cached = USED[i], CACHED[i]
    return {
        "model": "SmolLM2-135M-Instruct.Q4_1", "status": "ready", "uptime_s": 7384.2,
        "kv": {"block_size": 16, "num_blocks": NUM_BLOCKS, "used_blocks": used, "cached_blocks": cached,
               "free_blocks": NUM_BLOCKS - used - cached, "usage_perc": used / NUM_BLOCKS,
               "shared_blocks": used // 3, "pinned_blocks": 8, "waste_perc": 0.031, "memory_share": 0.418},
        "prefix_cache": {"query_tokens": QUERY_TOKENS, "hit_tokens": HIT_TOKENS,
                         "hit_rate": HIT_TOKENS / QUERY_TOKENS},
        "requests": {"running": 12, "waiting": 3, "preemptions_total": 2,
                     "finished": {"stop": 2401, "length": 108}},
        "throughput": {"prompt_tokens_per_s": PROMPT_TPS[i], "generation_tokens_per_s": GEN_TPS[i],
                       "window_s": 10.0},
        "latency": {name: {"p50": None, "p90": None, "p99": None, "num_samples": 0}
                    for name in ("ttft_s", "tpot_s", "e2e_s", "queue_s", "retrieval_s")},
        "totals": {"prompt_tokens_computed": 429_633, "generation_tokens": 140_419, "engine_steps": 90_210},
        "tenants": USAGE,
        "admission": {"paused": False, "draining": False, "active_http": 15, "inflight": 15,
                      "queued_requests": 3, "queued_tokens": 1_870, "max_queued_requests": 256,
                      "max_queued_tokens": 262_144},
        "cost": COST,
        "quality": RECORDED_QUALITY,
    }


def _histogram(name: str, bounds: tuple[float, ...], per_step: tuple[int, ...], steps: int) -> list[str]:
    lines, running = [f"# TYPE {name} histogram"], 0
    for bound, n in zip((*bounds, float("inf")), per_step, strict=True):
        running += n * steps
        le = "+Inf" if bound == float("inf") else repr(float(bound))
        lines.append(f'{name}_bucket{{le="{le}"}} {running}')
    return [*lines, f"{name}_sum 0.0", f"{name}_count {running}"]


def metrics_text(step: int) -> str:
    lines = _histogram("appliance:time_to_first_token_seconds", TTFT_BUCKETS, TTFT_PER_STEP, step)
    lines += _histogram("appliance:time_per_output_token_seconds", TPOT_BUCKETS, TPOT_PER_STEP, step)
    return "\n".join(lines) + "\n"


class SyntheticAppliance(ThreadedApp):
    """Serves on 127.0.0.1 from a thread of its own (the dashboard under test runs its own loop)."""

    def __init__(self) -> None:
        super().__init__(PORT)
        self.num_stats = 0
        self.num_metrics = 0
        self.failing: set[str] = set()  # paths answered with a 500, to show a partial outage
        self.tracing = True  # what /admin/traces says of the server's tracing

    def reset(self) -> None:
        self.num_stats = self.num_metrics = 0
        self.failing = set()
        self.tracing = True

    def build(self) -> web.Application:
        app = web.Application(middlewares=[self._auth])
        app.router.add_get("/admin/stats", self._stats)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/admin/tenants", self._tenants)
        app.router.add_get("/v1/collections", self._collections)
        app.router.add_get("/v1/collections/{name}/documents", self._documents)
        app.router.add_post("/admin/cache/flush", self._flush)
        app.router.add_get("/admin/alerts", self._alerts)
        app.router.add_get("/admin/traces", self._traces)
        return app

    @web.middleware
    async def _auth(self, request: web.Request, handler):
        if request.path in self.failing:
            error = {"message": "internal error", "type": "server_error", "param": None, "code": None}
            return web.json_response({"error": error}, status=500)
        if request.path != "/metrics" and request.headers.get("Authorization") != f"Bearer {KEY}":
            error = {"message": "invalid API key", "type": "authentication_error", "param": None,
                     "code": "invalid_api_key"}
            return web.json_response({"error": error}, status=401)
        return await handler(request)

    async def _stats(self, request: web.Request) -> web.Response:
        self.num_stats += 1
        return web.json_response(stats_doc(self.num_stats - 1))

    async def _metrics(self, request: web.Request) -> web.Response:
        self.num_metrics += 1
        return web.Response(text=metrics_text(self.num_metrics), content_type="text/plain")

    async def _flush(self, request: web.Request) -> web.Response:
        """A server that answers in a shape the dashboard does not expect (a count that is text)."""
        return web.json_response({"flushed_blocks": "many"})

    async def _traces(self, request: web.Request) -> web.Response:
        order = request.query.get("order", "recent")
        traces = RECORDED_TRACES if self.tracing else []
        if order == "slowest":
            traces = sorted(traces, key=lambda t: t["duration_ms"], reverse=True)
        return web.json_response({"enabled": self.tracing, "order": order,
                                  "traces": traces[:int(request.query.get("limit", "50"))]})

    async def _alerts(self, request: web.Request) -> web.Response:
        return web.json_response({"alerts": CALM_ALERTS})

    async def _tenants(self, request: web.Request) -> web.Response:
        rows = [{**t, "created_at": "2026-01-01T00:00:00+00:00"} for t in TENANTS]
        return web.json_response({"tenants": rows})

    async def _collections(self, request: web.Request) -> web.Response:
        rows = [{"name": name, "documents": len(docs), "chunks": sum(c for _, c in docs)}
                for name, docs in COLLECTIONS.items()]
        return web.json_response({"collections": rows})

    async def _documents(self, request: web.Request) -> web.Response:
        docs = COLLECTIONS.get(request.match_info["name"])
        if docs is None:
            error = {"message": "collection not found", "type": "not_found_error", "param": "collection",
                     "code": "collection_not_found"}
            return web.json_response({"error": error}, status=404)
        return web.json_response({"documents": [
            {"doc_id": f"doc-{i}", "source": f"/docs/{i}.md", "chunks": chunks, "content_sha256": "0" * 64,
             "status": status, "updated_at": "2026-01-01T00:00:00+00:00"}
            for i, (status, chunks) in enumerate(docs)]})
