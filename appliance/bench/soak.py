"""Soak: many requests at high concurrency with client disconnects and invalid requests mixed in.

What a long-running appliance must survive: clients that hang up mid-stream, clients that send
every kind of bad field, all while valid traffic flows. The soak passes when no request gets a 5xx,
no valid request fails, every invalid one gets the 4xx its kind calls for, and once the load is
over the engine holds nothing (no KV block referenced, nothing running or waiting). It reports p99
TTFT and the server's RSS before and after (when the server runs on this machine), so a leak shows
as growth. Not a CI test: `appliance bench soak` (the suite runs a small one as a smoke test).
Without `--url` it starts its own `appliance serve`, as `bench serve` does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

from appliance.bench.serve import (
    OwnServer,
    chat_workload,
    model_id,
    run_against_server,
    server_url,
    short_workload,
)
from appliance.bench.stats import percentiles

SETTLE_POLL_S = 0.2


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=None, help="a running server (default: start one for the soak)")
    p.add_argument("--api-key", default=None, help="key for --url (an admin key also reports leaks)")
    p.add_argument("--server-pid", type=int, default=None,
                   help="pid of the --url server on this machine, to report its RSS")
    p.add_argument("--num-requests", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=64, help="concurrent client streams")
    p.add_argument("--warmup-requests", type=int, default=128,
                   help="valid requests at full concurrency before RSS before is read")
    p.add_argument("--disconnect-share", type=float, default=0.2,
                   help="share of requests whose client hangs up after the first token")
    p.add_argument("--invalid-share", type=float, default=0.1, help="share of invalid requests")
    p.add_argument("--max-tokens", type=int, default=16, help="output tokens per valid request")
    p.add_argument("--workload", choices=["chat", "short"], default="chat",
                   help="chat: RAG-shaped prompts (~750 tokens, shared prefixes); short: one-line questions")
    p.add_argument("--settle-timeout", type=float, default=60.0,
                   help="seconds to wait for the engine to go idle after the load")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", dest="json_path", default=None, help="also write the report as JSON")
    p.add_argument("--kv-cache-gib", type=float, default=1.0, help="KV cache of the started server")


# --- the requests ---------------------------------------------------------------------------------
@dataclass(slots=True)
class Case:
    """One request of the soak and what must come back."""

    kind: str  # "valid" or the invalid kind's name
    path: str
    body: dict | bytes
    expect: frozenset[int] = frozenset({200})
    stream: bool = False
    disconnect: bool = False

    @property
    def is_valid(self) -> bool:
        return self.kind == "valid"


def invalid_cases(model: str, context_limit: int) -> list[Case]:
    """Every kind of bad field, each with the status it must get (unknown fields are ignored: 200)."""
    chat = {"model": model, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4}
    cmpl = {"model": model, "prompt": "Hello", "max_tokens": 4}
    bad_chat = {
        "stop_token_ids_out_of_vocab": {"stop_token_ids": [10_000_000], "min_tokens": 1},
        "stop_token_ids_huge": {"stop_token_ids": [2**40], "min_tokens": 1},
        "stop_token_ids_negative": {"stop_token_ids": [-1]},
        "stop_token_ids_wrong_type": {"stop_token_ids": "7"},
        "logit_bias": {"logit_bias": {"50256": 100}},
        "max_tokens_wrong_type": {"max_tokens": "ten"},
        "max_tokens_negative": {"max_tokens": -5},
        "max_tokens_past_context": {"max_tokens": 4 * context_limit},
        "temperature_wrong_type": {"temperature": "hot"},
        "temperature_negative": {"temperature": -1},
        "top_p_wrong_type": {"top_p": []},
        "top_k_huge": {"top_k": 2**40},
        "seed_huge": {"seed": 2**70},
        "seed_wrong_type": {"seed": 1.5},
        "stop_wrong_type": {"stop": 5},
        "stream_wrong_type": {"stream": "yes"},
        "messages_wrong_type": {"messages": "hello"},
        "messages_missing": {"messages": None},
        "n_2": {"n": 2},
        "model_unknown": {"model": "no-such-model"},
    }
    cases = [Case(k, "/v1/chat/completions", _without_none({**chat, **v}), _status(k)) for k, v in
             bad_chat.items()]
    cases += [Case("unknown_field", "/v1/chat/completions", {**chat, "frobnicate": {"x": [1]}}, _status(""))]
    for name, prompt in (("prompt_ids_huge", [2**40]), ("prompt_ids_negative", [-3]),
                         ("prompt_past_context", [1] * (context_limit + 1))):
        cases.append(Case(name, "/v1/completions", {**cmpl, "prompt": prompt}, frozenset({400})))
    cases += _malformed(model)
    return cases


def _status(kind: str) -> frozenset[int]:
    if kind == "model_unknown":
        return frozenset({404})
    return frozenset({400}) if kind else frozenset({200})


def _without_none(body: dict) -> dict:
    return {k: v for k, v in body.items() if v is not None}


def _malformed(model: str) -> list[Case]:
    lone_surrogate = ('{"model": "MODEL", "messages": [{"role": "user", "content": "\\ud800"}]}'
                      .replace("MODEL", model).encode())
    raw = {"json_broken": b'{"model": ', "json_not_object": b"[1, 2]", "body_empty": b"",
           "unicode_lone_surrogate": lone_surrogate}
    cases = [Case(k, "/v1/chat/completions", v, frozenset({400})) for k, v in raw.items()]
    cases.append(Case("body_too_large", "/v1/chat/completions",
                      b'{"x": "' + b"a" * (8 << 20) + b'"}', frozenset({413})))
    cases += [Case("rag_query_collection_missing", "/v1/rag/query", {"query": "Who?"}, frozenset({400})),
              Case("rag_query_wrong_type", "/v1/rag/query", {"query": 5, "collection": "c"},
                   frozenset({400})),
              Case("rag_retrieve_top_k_zero", "/v1/rag/retrieve",
                   {"query": "Who?", "collection": "c", "top_k": 0}, frozenset({400}))]
    return cases


def valid_cases(model: str, n: int, max_tokens: int, workload: str, seed: int) -> list[Case]:
    """Streamed chat, streamed completions and non-streamed chat in a 3:1:1 mix, greedy, EOS ignored."""
    make = chat_workload if workload == "chat" else short_workload
    cases = []
    for i, body in enumerate(make(model, n, max_tokens, seed).bodies):
        slot = i % 5
        if slot == 3:
            text = "\n\n".join(m["content"] for m in body["messages"])
            body = {"model": model, "prompt": text, "max_tokens": max_tokens, "temperature": 0.0,
                    "ignore_eos": True, "stream": True}
            cases.append(Case("valid", "/v1/completions", body, stream=True))
        elif slot == 4:
            body = {k: v for k, v in body.items() if k != "stream_options"}
            cases.append(Case("valid", "/v1/chat/completions", {**body, "stream": False}))
        else:
            cases.append(Case("valid", "/v1/chat/completions", body, stream=True))
    return cases


def build_plan(model: str, context_limit: int, n: int, disconnect_share: float, invalid_share: float,
               max_tokens: int, workload: str = "chat", seed: int = 0) -> list[Case]:
    """n requests in a shuffled order: the invalid share cycles through every kind, a disconnect
    share of all requests is taken from the streamed valid ones (they ask for more tokens)."""
    rng = random.Random(seed)
    kinds = invalid_cases(model, context_limit)
    num_invalid = round(n * invalid_share)
    plan = [kinds[i % len(kinds)] for i in range(num_invalid)]
    valid = valid_cases(model, n - num_invalid, max_tokens, workload, seed)
    streamed = [c for c in valid if c.stream]
    for case in rng.sample(streamed, min(len(streamed), round(n * disconnect_share))):
        case.disconnect = True
        case.body = {**case.body, "max_tokens": 4 * max_tokens}
    plan += valid
    rng.shuffle(plan)
    return plan


# --- one request --------------------------------------------------------------------------------
@dataclass(slots=True)
class Outcome:
    kind: str
    status: int | None
    problem: str | None = None  # why this is an unexpected error; None when it went as it should
    ttft: float | None = None
    disconnected: bool = False


async def send(session, url: str, case: Case) -> Outcome:
    started = time.perf_counter()
    data = case.body if isinstance(case.body, bytes) else json.dumps(case.body).encode()
    try:
        async with session.post(url + case.path, data=data,
                                headers={"Content-Type": "application/json"}) as resp:
            if resp.status != 200 or not case.stream:
                payload = await resp.read()
                return Outcome(case.kind, resp.status, _check_reply(case, resp.status, payload))
            return await _read_stream(case, resp, started)
    except Exception as exc:  # a broken connection is a finding of the soak, not the end of it
        return Outcome(case.kind, None, f"{type(exc).__name__}: {exc}"[:200])


def _check_reply(case: Case, status: int, payload: bytes) -> str | None:
    if status not in case.expect:
        return f"{case.kind}: HTTP {status} (expected {sorted(case.expect)}): {payload[:160]!r}"
    if status == 200:
        return None
    try:
        error = json.loads(payload)["error"]
        shaped = {"message", "type", "param", "code"} <= set(error)
    except (ValueError, KeyError, TypeError):
        shaped = False
    return None if shaped else f"{case.kind}: HTTP {status} without an OpenAI-shaped error body"


async def _read_stream(case: Case, resp, started: float) -> Outcome:
    outcome = Outcome(case.kind, resp.status)
    async for line in resp.content:
        if line.strip() == b"data: [DONE]":
            return outcome
        if not line.startswith(b"data: {"):
            continue
        event = json.loads(line[6:])
        if "error" in event:
            outcome.problem = f"stream error event: {event['error']}"[:200]
            return outcome
        if outcome.ttft is None and _has_text(event):
            outcome.ttft = time.perf_counter() - started
            if case.disconnect:
                resp.connection.transport.abort()  # hang up mid-stream
                outcome.disconnected = True
                return outcome
    outcome.problem = "the stream ended without [DONE]"
    return outcome


def _has_text(event: dict) -> bool:
    choices = event.get("choices") or []
    if not choices:
        return False
    return bool(choices[0].get("text") or (choices[0].get("delta") or {}).get("content"))


async def run_plan(url: str, key: str, plan: list[Case], concurrency: int) -> tuple[list[Outcome], float]:
    import aiohttp

    queue = list(plan)
    outcomes: list[Outcome] = []
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=True)
    timeout = aiohttp.ClientTimeout(total=3600)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout,
                                     headers={"Authorization": f"Bearer {key}"}) as session:
        async def client() -> None:
            while queue:
                outcomes.append(await send(session, url, queue.pop()))

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        return outcomes, time.perf_counter() - started


# --- the server's state -----------------------------------------------------------------------------
def rss_kib(pid: int | None) -> int | None:
    """VmRSS of a local process, in KiB (None when unknown)."""
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


async def settled_stats(url: str, key: str, timeout_s: float) -> dict | None:
    """/admin/stats once nothing runs, waits or holds a block (or at the timeout); None without admin."""
    import aiohttp

    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as session:
        while True:
            async with session.get(url + "/admin/stats") as resp:
                if resp.status != 200:
                    return None
                stats = await resp.json()
            if _idle(stats) or time.monotonic() > deadline:
                return stats
            await asyncio.sleep(SETTLE_POLL_S)


def _idle(stats: dict) -> bool:
    req = stats["requests"]
    return req["running"] == 0 and req["waiting"] == 0 and stats["kv"]["used_blocks"] == 0


async def context_limit_of(url: str, key: str) -> int:
    import aiohttp

    headers = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession(headers=headers) as session, session.get(url + "/v1/models") as resp:
        return int((await resp.json())["data"][0]["max_model_len"])


# --- the report -----------------------------------------------------------------------------------
@dataclass(slots=True)
class Report:
    num_requests: int
    concurrency: int
    duration_s: float
    valid_ok: int
    disconnected: int
    unexpected_errors: int
    unexpected_examples: list[str]
    expected_4xx: dict[str, int]
    leaked_blocks: int | None
    running_after: int | None
    waiting_after: int | None
    rss_before_kib: int | None
    rss_after_kib: int | None
    ttft_s: dict = field(default_factory=dict)

    @property
    def rss_growth_pct(self) -> float | None:
        if not self.rss_before_kib or self.rss_after_kib is None:
            return None
        return 100.0 * (self.rss_after_kib - self.rss_before_kib) / self.rss_before_kib

    @property
    def passed(self) -> bool:
        """No unexpected error, and an idle engine with no block held (when an admin key could tell)."""
        return self.unexpected_errors == 0 and not self.leaked_blocks and not self.running_after \
            and not self.waiting_after

    def to_dict(self) -> dict:
        out = {name: getattr(self, name) for name in self.__slots__}
        out["rss_growth_pct"] = self.rss_growth_pct
        out["passed"] = self.passed
        return out


def make_report(outcomes: list[Outcome], duration: float, concurrency: int, stats: dict | None,
                rss: tuple[int | None, int | None]) -> Report:
    problems = [o.problem for o in outcomes if o.problem]
    expected_4xx: dict[str, int] = {}
    for o in outcomes:
        if o.problem is None and o.status is not None and 400 <= o.status < 500:
            expected_4xx[o.kind] = expected_4xx.get(o.kind, 0) + 1
    return Report(
        num_requests=len(outcomes), concurrency=concurrency, duration_s=duration,
        valid_ok=sum(1 for o in outcomes if o.kind == "valid" and o.problem is None),
        disconnected=sum(o.disconnected for o in outcomes), unexpected_errors=len(problems),
        unexpected_examples=problems[:10], expected_4xx=dict(sorted(expected_4xx.items())),
        leaked_blocks=None if stats is None else stats["kv"]["used_blocks"],
        running_after=None if stats is None else stats["requests"]["running"],
        waiting_after=None if stats is None else stats["requests"]["waiting"],
        rss_before_kib=rss[0], rss_after_kib=rss[1],
        ttft_s=percentiles([o.ttft for o in outcomes if o.ttft is not None]))


def print_report(report: Report) -> None:
    def cell(value, fmt: str = "{}") -> str:
        return "n/a" if value is None else fmt.format(value)

    ttft = report.ttft_s
    rows = [
        ("requests / concurrency", f"{report.num_requests} / {report.concurrency}"),
        ("duration", f"{report.duration_s:.1f} s"),
        ("valid ok / disconnected", f"{report.valid_ok} / {report.disconnected}"),
        ("unexpected errors", str(report.unexpected_errors)),
        ("expected 4xx", str(sum(report.expected_4xx.values()))),
        ("leaked blocks", cell(report.leaked_blocks, "{}") if report.leaked_blocks is not None
         else "n/a (needs an admin key)"),
        ("running / waiting after", f"{cell(report.running_after)} / {cell(report.waiting_after)}"),
        ("RSS before / after", f"{cell(report.rss_before_kib, '{:,} KiB')} / "
                               f"{cell(report.rss_after_kib, '{:,} KiB')} "
                               f"({cell(report.rss_growth_pct, '{:+.1f}%')})"),
        ("TTFT p50 / p99", f"{cell(ttft.get('p50'), '{:.3f}')} / {cell(ttft.get('p99'), '{:.3f}')} s"),
        ("result", "PASS" if report.passed else "FAIL"),
    ]
    width = max(len(name) for name, _ in rows)
    print()
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    for kind, count in report.expected_4xx.items():
        print(f"    {kind}: {count}")
    for problem in report.unexpected_examples:
        print(f"  ! {problem}")
    print(json.dumps({"soak": report.to_dict()}))


# --- the benchmark ----------------------------------------------------------------------------------
async def soak(url: str, key: str, args: argparse.Namespace, pid: int | None) -> Report:
    model = await model_id(url, key)
    plan = build_plan(model, await context_limit_of(url, key), args.num_requests, args.disconnect_share,
                      args.invalid_share, args.max_tokens, args.workload, args.seed)
    # Warm up at full concurrency, so that RSS before counts a server that has served this load once
    # (allocator pools, batch-sized buffers): growth after it is what a leak would show.
    warm_up = valid_cases(model, args.warmup_requests, args.max_tokens, args.workload, args.seed + 1)
    await run_plan(url, key, warm_up, args.concurrency)
    before = rss_kib(pid)
    print(f"soak: {len(plan)} requests at {args.concurrency} streams against {url} (model {model})",
          flush=True)
    outcomes, duration = await run_plan(url, key, plan, args.concurrency)
    stats = await settled_stats(url, key, args.settle_timeout)
    return make_report(outcomes, duration, args.concurrency, stats, (before, rss_kib(pid)))


def run(args: argparse.Namespace) -> int:
    from appliance.cli import UserError

    problem = _check_args(args)
    if problem:
        raise UserError(problem)
    report = run_against_server(args, lambda server: _main(args, server))
    print_report(report)
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(report.to_dict(), indent=2))
    return 0 if report.passed else 1


async def _main(args: argparse.Namespace, server: OwnServer | None) -> Report:
    url, key = await server_url(args, server)
    return await soak(url, key, args, server.proc.pid if server else args.server_pid)


def _check_args(args: argparse.Namespace) -> str | None:
    if args.url and not args.api_key:
        return "--url needs --api-key"
    if args.num_requests < 1 or args.concurrency < 1 or args.max_tokens < 1:
        return "--num-requests, --concurrency and --max-tokens must be >= 1"
    if not (0 <= args.disconnect_share <= 1 and 0 <= args.invalid_share <= 1):
        return "--disconnect-share and --invalid-share must be in [0, 1]"
    if args.settle_timeout < 0 or args.warmup_requests < 0:
        return "--settle-timeout and --warmup-requests must be >= 0"
    return None
