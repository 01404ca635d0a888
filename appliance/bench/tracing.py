"""Tracing overhead: serving throughput with request tracing on against the same server with it off.

One server, one workload (streamed RAG queries by default, the path with the most spans), phases
that alternate tracing on and off (`POST /admin/tracing`) round after round, the order swapped every
other round; each phase starts with a flushed prefix cache. Each round's two phases run back to
back, so their ratio (throughput on / off) is measured under one state of the machine; the overhead
is 1 - the median of the rounds' ratios (target < 3%), which a drift of the machine between rounds
does not move. With its own server the benchmark also reads the server process's CPU time per
request (user + system, from /proc) on both sides: the work tracing adds, whatever else the machine
runs. Last, it times tracing's own work for one RAG-shaped request (a root, eight stages, the trace
filed in a ring; no export) in its own process, next to the server's CPU time per request: what the
phases measure within their noise. Each phase counts the traces the server kept for it: all of its
requests when on, none when off. Without `--url` it starts its own `appliance serve`, as `bench
serve` does; with `--url` it needs an admin key, and it leaves tracing as it found it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from pathlib import Path

from appliance.bench.serve import (
    OwnServer,
    Workload,
    chat_workload,
    flush_cache,
    model_id,
    rag_workload,
    run_against_server,
    run_load,
    server_url,
    short_workload,
    summarize,
    upload_docs,
)

TARGET = 0.03
NUM_TIMED_TRACES = 2000
# A streamed response can reach the client a moment before the server files its trace (the root span
# ends when the handler returns, after the last byte): the count of a phase's traces waits this long.
SETTLE_S = 0.2


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=None, help="a running server (default: start one)")
    p.add_argument("--api-key", default=None, help="an admin key for --url (switches tracing)")
    p.add_argument("--collection", default="bench", help="RAG workload collection (with --url)")
    p.add_argument("--workload", choices=["rag", "chat", "short"], default="rag",
                   help="rag: /v1/rag/query over the uploaded documents; chat: RAG-shaped chat prompts; "
                        "short: one-line questions")
    p.add_argument("--rounds", type=int, default=6, help="on/off pairs of phases")
    p.add_argument("--num-requests", type=int, default=16, help="streamed requests per phase")
    p.add_argument("--concurrency", type=int, default=4, help="clients per phase (closed loop)")
    p.add_argument("--max-tokens", type=int, default=16, help="output tokens per request (EOS ignored)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", dest="json_path", default=None, help="also write the results as JSON")
    p.add_argument("--kv-cache-gib", type=float, default=1.0, help="KV cache of the started server")


def run(args: argparse.Namespace) -> int:
    from appliance.cli import UserError

    if args.url and not args.api_key:
        raise UserError("--url needs --api-key (an admin key: the benchmark switches tracing)")
    if min(args.rounds, args.num_requests, args.concurrency, args.max_tokens) < 1:
        raise UserError("--rounds, --num-requests, --concurrency and --max-tokens must be >= 1")
    return run_against_server(args, lambda server: _bench(args, server))


async def _bench(args: argparse.Namespace, server: OwnServer | None) -> int:
    url, key = await server_url(args, server)
    if args.workload == "rag":
        if server is not None:
            print(f"uploaded {await upload_docs(url, key, args.collection)} chunks to '{args.collection}'")
        workload = rag_workload(args.collection, args.num_requests, args.max_tokens, args.seed)
    else:
        make = short_workload if args.workload == "short" else chat_workload
        workload = make(await model_id(url, key), args.num_requests, args.max_tokens, args.seed)
    was_on = await _set_tracing(url, key, True)
    try:
        warmup = Workload(workload.kind, workload.path, workload.bodies[:2])
        await run_load(url, key, warmup, 1, None, args.seed)
        rows = []
        pid = server.proc.pid if server is not None else None
        for round_index in range(args.rounds):
            for tracing in ((True, False) if round_index % 2 == 0 else (False, True)):
                rows.append(await _phase(url, key, workload, tracing, args, pid))
    finally:
        await _set_tracing(url, key, was_on)
    return _report(rows, args)


async def _phase(url: str, key: str, workload: Workload, tracing: bool, args: argparse.Namespace,
                 pid: int | None) -> dict:
    await _set_tracing(url, key, tracing)
    await flush_cache(url, key)
    started, cpu_before = time.time(), _cpu_seconds(pid)
    samples, duration = await run_load(url, key, workload, args.concurrency, None, args.seed)
    cpu_after = _cpu_seconds(pid)
    row = summarize(f"tracing {'on' if tracing else 'off'}", samples, duration)
    row["tracing"] = tracing
    known = cpu_before is not None and cpu_after is not None and row["completed"]
    row["server_cpu_s_per_request"] = (cpu_after - cpu_before) / row["completed"] if known else None
    row["traced_requests"] = await _num_traced(url, key, started)
    _print_phase(row)
    return row


def _print_phase(row: dict) -> None:
    cpu = row["server_cpu_s_per_request"]
    print(f"{row['label']:<12} {row['output_token_throughput']:8.2f} output tok/s "
          f"{row['request_throughput']:6.3f} req/s  {row['completed']}/{row['num_requests']} ok  "
          f"{row['traced_requests']} traced" + (f"  server CPU {cpu:.3f} s/request" if cpu else ""),
          flush=True)


def _cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU time of a process and its threads so far (Linux /proc); None elsewhere."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _set_tracing(url: str, key: str, enabled: bool) -> bool:
    """Switch tracing; returns whether it was on before."""
    import aiohttp

    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as session:
        async with session.get(url + "/admin/traces", params={"limit": "1"}) as resp:
            before = await resp.json(content_type=None)
            if resp.status != 200:
                raise RuntimeError(f"GET /admin/traces: HTTP {resp.status}: {before.get('error', before)}")
        async with session.post(url + "/admin/tracing", json={"enabled": enabled}) as resp:
            if resp.status != 200:
                raise RuntimeError(f"POST /admin/tracing: HTTP {resp.status}: {await resp.text()}")
    return bool(before["enabled"])


async def _num_traced(url: str, key: str, since: float) -> int:
    """Traces the server kept of requests that started after `since` (wall clock)."""
    import aiohttp

    await asyncio.sleep(SETTLE_S)
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as session, \
            session.get(url + "/admin/traces", params={"limit": "500"}) as resp:
        body = await resp.json(content_type=None)
    return sum(1 for t in body.get("traces", []) if t["started_at"] >= since)


def _paired(rows: list[dict], key: str) -> list[float]:
    """Per round (two consecutive phases): the on phase's `key` over the off phase's."""
    ratios = []
    for first, second in zip(rows[::2], rows[1::2], strict=True):
        on, off = (first, second) if first["tracing"] else (second, first)
        if on[key] and off[key]:
            ratios.append(on[key] / off[key])
    return ratios


def _report(rows: list[dict], args: argparse.Namespace) -> int:
    ratios = _paired(rows, "output_token_throughput")
    overhead = 1.0 - statistics.median(ratios) if ratios else None
    cpu_ratios = _paired(rows, "server_cpu_s_per_request")
    cpu_extra = statistics.median(cpu_ratios) - 1.0 if cpu_ratios else None
    print(f"\nthroughput on/off per round: {', '.join(f'{r:.3f}' for r in ratios)}")
    if overhead is not None:
        print(f"tracing overhead: {overhead * 100:+.1f}% of throughput, median of {len(ratios)} rounds "
              f"(target < {TARGET * 100:.0f}%)")
    if cpu_extra is not None:
        print(f"server CPU per request on/off per round: {', '.join(f'{r:.3f}' for r in cpu_ratios)}; "
              f"tracing adds {cpu_extra * 100:+.1f}% CPU per request (median)")
    own_us = _print_own_work(rows)
    if args.json_path:
        Path(args.json_path).write_text(json.dumps({
            "args": {k: v for k, v in vars(args).items() if k not in ("func", "api_key")},
            "throughput_ratios": ratios, "overhead": overhead, "cpu_ratios": cpu_ratios,
            "cpu_extra": cpu_extra, "tracing_us_per_request": own_us, "rows": rows}, indent=2))
    return 0 if all(r["failed"] == 0 for r in rows) else 1


def _print_own_work(rows: list[dict]) -> float:
    """Time tracing's own work per request; print it next to the server's CPU per request (off)."""
    own_us = tracing_cost_us(NUM_TIMED_TRACES)
    cpu_off = [r["server_cpu_s_per_request"] for r in rows
               if not r["tracing"] and r["server_cpu_s_per_request"]]
    share = (f" = {own_us / 1e6 / statistics.median(cpu_off) * 100:.3f}% of the server's CPU per request"
             if cpu_off else "")
    print(f"tracing's own work: {own_us:.0f} µs per RAG-shaped request{share}")
    return own_us


def tracing_cost_us(num_traces: int) -> float:
    """Mean wall time, in this process, of tracing one RAG-shaped request: its root span, the eight
    stages a RAG query has, and the finished trace filed in a ring (what the server adds per request,
    without the request)."""
    from appliance.server.tracing import EngineTimes, Tracing

    tracing = Tracing(True)
    started = time.perf_counter()
    for i in range(num_traces):
        request = tracing.start("POST", "/v1/rag/query", "/v1/rag/query", str(i))
        with request.current():
            for name in ("auth", "embed", "search", "prompt"):
                with request.stage(name):
                    pass
            now = time.monotonic()
            request.engine_stages(EngineTimes(now, now, now, now), 400, 300, 16, "length")
        request.headers()
        request.end(200, "bench", None, streamed=True)
    return (time.perf_counter() - started) / num_traces * 1e6
