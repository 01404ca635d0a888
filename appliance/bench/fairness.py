"""Fairness: one tenant floods the server while another sends requests; the light tenant's TTFT.

The light tenant sends its requests one at a time, first on an idle server and then while the flood
tenant keeps `--flood-concurrency` streams busy (closed loop). The engine admits waiting requests by
virtual token counting across tenants, so the light tenant's request goes ahead of the flood's queue;
the target is a TTFT under flood within 2x of the idle TTFT. The two phases use different prompts of
the same shape (a RAG-shaped chat, shared system prompt), so neither phase gets the other's cache.
Without `--url` it starts its own `appliance serve`, as `bench serve` does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
from pathlib import Path

from appliance.bench.serve import (
    OwnServer,
    Workload,
    chat_workload,
    model_id,
    run_against_server,
    send,
    server_url,
)
from appliance.bench.stats import percentiles

TENANTS = ("flood", "light")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=None, help="a running server (default: start one)")
    p.add_argument("--api-key", default=None, help="an admin key for --url (creates the two tenants)")
    p.add_argument("--num-requests", type=int, default=12, help="light tenant requests per phase")
    p.add_argument("--flood-concurrency", type=int, default=16, help="flood tenant's concurrent streams")
    p.add_argument("--max-tokens", type=int, default=16, help="output tokens per request (EOS ignored)")
    p.add_argument("--warmup-s", type=float, default=5.0, help="flood time before the light requests")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", dest="json_path", default=None, help="also write the results as JSON")
    p.add_argument("--kv-cache-gib", type=float, default=1.0, help="KV cache of the started server")


def run(args: argparse.Namespace) -> int:
    from appliance.cli import UserError

    if args.url and not args.api_key:
        raise UserError("--url needs --api-key (an admin key)")
    if min(args.num_requests, args.flood_concurrency, args.max_tokens) < 1:
        raise UserError("--num-requests, --flood-concurrency and --max-tokens must be >= 1")
    return run_against_server(args, lambda server: _bench(args, server))


async def _bench(args: argparse.Namespace, server: OwnServer | None) -> int:
    url, admin = await server_url(args, server)
    keys = await _tenant_keys(url, admin)
    model = await model_id(url, admin)
    n = args.num_requests
    idle_load = chat_workload(model, n + 1, args.max_tokens, args.seed)
    flood_light = chat_workload(model, n, args.max_tokens, args.seed + 1)
    flood_load = chat_workload(model, 4 * args.flood_concurrency, args.max_tokens, args.seed + 2)
    await _one_by_one(url, keys["light"], _subset(idle_load, 0, 1))  # warm: model, system prompt
    idle = await _one_by_one(url, keys["light"], _subset(idle_load, 1, n + 1))
    flooded, flood_done = await _under_flood(url, keys, flood_light, flood_load, args)
    return _report(idle, flooded, flood_done, args)


def _subset(workload: Workload, start: int, stop: int) -> Workload:
    return Workload(workload.kind, workload.path, workload.bodies[start:stop])


async def _tenant_keys(url: str, admin: str) -> dict[str, str]:
    import aiohttp

    keys = {}
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {admin}"}) as session:
        for name in TENANTS:
            async with session.post(url + "/admin/tenants", json={"name": name}) as resp:
                if resp.status not in (200, 201, 409):
                    raise RuntimeError(f"POST /admin/tenants: HTTP {resp.status}: {await resp.text()}")
            async with session.post(url + "/admin/keys", json={"tenant": name}) as resp:
                body = await resp.json(content_type=None)
                if resp.status not in (200, 201):
                    raise RuntimeError(f"POST /admin/keys: HTTP {resp.status}: {body}")
                keys[name] = body["key"]
    return keys


async def _one_by_one(url: str, key: str, workload: Workload) -> list:
    import aiohttp

    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as session:
        return [await send(session, url, workload, body) for body in workload.bodies]


async def _under_flood(url: str, keys: dict[str, str], light: Workload, flood: Workload,
                       args: argparse.Namespace) -> tuple[list, int]:
    import aiohttp

    done = 0
    stop = asyncio.Event()

    async def flooder(session, offset: int) -> None:
        nonlocal done
        i = offset
        while not stop.is_set():
            sample = await send(session, url, flood, flood.bodies[i % len(flood.bodies)])
            done += sample.ok
            i += args.flood_concurrency

    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {keys['flood']}"}) as session:
        tasks = [asyncio.create_task(flooder(session, k)) for k in range(args.flood_concurrency)]
        await asyncio.sleep(args.warmup_s)
        samples = await _one_by_one(url, keys["light"], light)
        stop.set()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
    return samples, done


def _report(idle: list, flooded: list, flood_done: int, args: argparse.Namespace) -> int:
    rows = {}
    for label, samples in (("idle", idle), ("flood", flooded)):
        ttft = [s.ttft for s in samples if s.ok and s.ttft is not None]
        rows[label] = {"ok": len(ttft), "failed": len(samples) - len(ttft), "ttft_s": percentiles(ttft)}
    p50_idle, p50_flood = rows["idle"]["ttft_s"]["p50"], rows["flood"]["ttft_s"]["p50"]
    ratio = p50_flood / p50_idle if p50_idle and p50_flood else None
    print(f"\nlight tenant TTFT, {args.num_requests} requests one at a time "
          f"(flood: {args.flood_concurrency} streams, {flood_done} flood requests completed meanwhile)")
    for label, row in rows.items():
        t = row["ttft_s"]
        cells = "  ".join(f"{k} {(t[k] or 0) * 1000:8.1f} ms" for k in ("p50", "p90", "mean"))
        print(f"  {label:<6} {cells}   ({row['ok']} ok, {row['failed']} failed)")
    if ratio is not None:
        print(f"TTFT p50 under flood / idle: {ratio:.2f}x (target <= 2x)")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps({"rows": rows, "ratio_p50": ratio,
                                                    "flood_completed": flood_done}, indent=2))
    return 0 if all(r["failed"] == 0 for r in rows.values()) else 1
