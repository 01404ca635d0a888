"""Serving load over HTTP: TTFT/TPOT/ITL/e2e percentiles and throughput, against one-at-a-time.

The load is Poisson arrivals (`--request-rate`) or a fixed number of clients (`--concurrency`),
every request streamed. The peer, measured in the same run on the same server and requests, is the
same workload sent one request at a time (concurrency 1): the ratio is what continuous batching
behind the HTTP API buys. Without `--url` the benchmark starts its own `appliance serve` on a free
port with a temporary data dir (and, for the RAG workload, uploads the squad-rag documents).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from appliance.bench.stats import percentiles

SQUAD = Path(__file__).resolve().parents[3] / "shared" / "data" / "squad-rag"
SAMPLES = Path(__file__).resolve().parents[1] / "samples"
SAMPLE_QUESTIONS = ["Who built the Varnholm lighthouse?", "Who runs the Brindle Street Bakery today?",
                    "When did the lighthouse become fully automatic?", "What is the bakery famous for?"]
BENCH_COLLECTION = "bench"
T = TypeVar("T")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=None, help="a running server (default: start one for the benchmark)")
    p.add_argument("--api-key", default=os.environ.get("APPLIANCE_API_KEY"), help="key for --url")
    p.add_argument("--collection", default=BENCH_COLLECTION, help="RAG workload collection (with --url)")
    p.add_argument("--workload", choices=["chat", "short", "rag"], default="chat",
                   help="chat: RAG-shaped chat prompts (~750 tokens, shared system prompt); short: one-line "
                        "questions (decode-bound); rag: /v1/rag/query over uploaded documents")
    p.add_argument("--num-requests", type=int, default=32)
    p.add_argument("--concurrency", type=int, default=8, help="number of clients (closed loop)")
    p.add_argument("--request-rate", type=float, default=None,
                   help="Poisson arrivals per second (open loop) instead of --concurrency")
    p.add_argument("--max-tokens", type=int, default=32, help="output tokens per request (EOS ignored)")
    p.add_argument("--no-peer", action="store_true", help="skip the one-at-a-time peer run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", dest="json_path", default=None, help="also write the results as JSON")
    p.add_argument("--kv-cache-gib", type=float, default=1.0, help="KV cache of the started server")
    p.add_argument("--kv-reuse", default=None,
                   help="rag workload: comma-separated kv_reuse modes measured one after the other "
                        "(prefix,chunks); questions then come Zipf-popular by gold paragraph, 3-5 "
                        "chunks each, so chunks recur in changing combinations")
    p.add_argument("--precompute", action="store_true",
                   help="with --kv-reuse: before the chunks mode's warm-up, store every chunk of the "
                        "collection (POST /admin/chunks/precompute; needs an admin key)")
    p.add_argument("--vllm", action="store_true",
                   help="with --kv-reuse: then the same prompts (rebuilt from /v1/rag/retrieve) to vLLM's "
                        "CPU build, prefix caching on, under the same load (see ../shared/peers/)")
    p.add_argument("--peers-dir", type=Path, default=None,
                   help="with --vllm: where the peers were built (default: $PEERS_DIR, else <tempdir>/peers)")
    p.add_argument("--vllm-dtype", default="bfloat16", choices=["bfloat16", "float32"])


@dataclass(slots=True)
class Sample:
    """One request as the client saw it."""

    ok: bool
    start: float
    ttft: float | None = None
    e2e: float = 0.0
    itl: list[float] = field(default_factory=list)
    output_tokens: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    error: str | None = None


@dataclass(slots=True)
class Workload:
    kind: str
    path: str
    bodies: list[dict]


# --- the workloads ------------------------------------------------------------------------------
def chat_workload(model: str, n: int, max_tokens: int, seed: int) -> Workload:
    from appliance.bench.workload import rag_requests

    bodies = [chat_body(model, r.messages, max_tokens) for r in rag_requests(n, seed=seed)]
    return Workload("chat", "/v1/chat/completions", bodies)


def chat_body(model: str, messages: list[dict], max_tokens: int) -> dict:
    """A streamed greedy chat request that generates exactly `max_tokens` tokens."""
    return {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0.0,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}


def short_workload(model: str, n: int, max_tokens: int, seed: int) -> Workload:
    bodies = [{"model": model, "messages": [{"role": "user", "content": q}], "max_tokens": max_tokens,
               "temperature": 0.0, "ignore_eos": True, "stream": True,
               "stream_options": {"include_usage": True}} for q in rag_questions(n, seed)]
    return Workload("chat", "/v1/chat/completions", bodies)


def rag_questions(n: int, seed: int) -> list[str]:
    path = SQUAD / "questions.jsonl"
    pool = ([json.loads(line)["question"] for line in path.read_text().splitlines() if line.strip()]
            if path.exists() else SAMPLE_QUESTIONS)
    rng = random.Random(seed)
    return [rng.choice(pool) for _ in range(n)]


def rag_workload(collection: str, n: int, max_tokens: int, seed: int) -> Workload:
    bodies = [{"query": q, "collection": collection, "max_tokens": max_tokens, "ignore_eos": True,
               "stream": True} for q in rag_questions(n, seed)]
    return Workload("rag", "/v1/rag/query", bodies)


# --- one streamed request -------------------------------------------------------------------------
async def send(session, url: str, workload: Workload, body: dict) -> Sample:
    sample = Sample(ok=False, start=time.perf_counter())
    last = sample.start
    try:
        async with session.post(url + workload.path, json=body) as resp:
            if resp.status != 200:
                sample.error = f"HTTP {resp.status}"
                return sample
            async for line in resp.content:
                last = _on_line(sample, workload.kind, line, last)
    except Exception as exc:  # a failed request is a data point, not the end of the benchmark
        sample.error = type(exc).__name__
        return sample
    sample.e2e = time.perf_counter() - sample.start
    sample.ok = sample.error is None and sample.ttft is not None
    return sample


def _on_line(sample: Sample, kind: str, line: bytes, last: float) -> float:
    if not line.startswith(b"data: {"):
        return last
    event = json.loads(line[6:])
    now = time.perf_counter()
    if "error" in event:
        sample.error = event["error"].get("code") or "stream error"
        return last
    if _text_of(kind, event):
        if sample.ttft is None:
            sample.ttft = now - sample.start
        else:
            sample.itl.append(now - last)
        last = now
    usage = event.get("usage")
    if usage:
        sample.output_tokens = usage["completion_tokens"]
        sample.prompt_tokens = usage["prompt_tokens"]
        sample.cached_tokens = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
    return last


def _text_of(kind: str, event: dict) -> str:
    if kind == "rag":
        return event.get("delta", "")
    choices = event.get("choices") or []
    if not choices:
        return ""
    if kind == "completion":  # OpenAI text completions: /v1/completions
        return choices[0].get("text") or ""
    return choices[0].get("delta", {}).get("content") or ""


# --- load shapes ----------------------------------------------------------------------------------
async def run_load(url: str, key: str, workload: Workload, concurrency: int | None,
                   rate: float | None, seed: int, keep_alive: bool = True) -> tuple[list[Sample], float]:
    """`keep_alive=False`: a new connection per request, for servers that drop idle ones unannounced."""
    import aiohttp

    limit = concurrency or 0  # 0 = unlimited connections for open-loop arrivals
    connector = aiohttp.TCPConnector(limit=limit, force_close=not keep_alive)
    timeout = aiohttp.ClientTimeout(total=3600)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout,
                                     headers={"Authorization": f"Bearer {key}"}) as session:
        started = time.perf_counter()
        if rate:
            samples = await _poisson(session, url, workload, rate, seed)
        else:
            samples = await _closed_loop(session, url, workload, concurrency or 1)
        return samples, time.perf_counter() - started


async def _closed_loop(session, url: str, workload: Workload, concurrency: int) -> list[Sample]:
    queue = list(enumerate(workload.bodies))
    results: dict[int, Sample] = {}

    async def client() -> None:
        while queue:
            index, body = queue.pop(0)
            results[index] = await send(session, url, workload, body)

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return [results[i] for i in sorted(results)]


async def _poisson(session, url: str, workload: Workload, rate: float, seed: int) -> list[Sample]:
    rng = random.Random(seed)
    tasks = []
    for body in workload.bodies:
        tasks.append(asyncio.create_task(send(session, url, workload, body)))
        await asyncio.sleep(rng.expovariate(rate))
    return list(await asyncio.gather(*tasks))


# --- summary --------------------------------------------------------------------------------------
def summarize(label: str, samples: list[Sample], duration: float) -> dict:
    ok = [s for s in samples if s.ok]
    out_tokens = sum(s.output_tokens for s in ok)
    prompt_tokens = sum(s.prompt_tokens for s in ok)
    tpot = [(s.e2e - s.ttft) / (s.output_tokens - 1) for s in ok
            if s.output_tokens > 1 and s.ttft is not None]
    return {
        "label": label, "num_requests": len(samples), "completed": len(ok), "failed": len(samples) - len(ok),
        "errors": sorted({s.error for s in samples if s.error}), "duration_s": duration,
        "request_throughput": len(ok) / duration, "output_token_throughput": out_tokens / duration,
        "total_token_throughput": (out_tokens + prompt_tokens) / duration,
        "prompt_tokens": prompt_tokens, "cached_tokens": sum(s.cached_tokens for s in ok),
        "output_tokens": out_tokens,
        "ttft_s": percentiles([s.ttft for s in ok if s.ttft is not None]),
        "tpot_s": percentiles(tpot), "itl_s": percentiles([x for s in ok for x in s.itl]),
        "e2e_s": percentiles([s.e2e for s in ok]),
    }


def print_summary(row: dict) -> None:
    print(f"\n== {row['label']}: {row['completed']}/{row['num_requests']} ok, {row['failed']} failed "
          f"{row['errors'] or ''} in {row['duration_s']:.1f} s")
    print(f"   requests/s {row['request_throughput']:.3f}   output tok/s {row['output_token_throughput']:.2f}"
          f"   total tok/s {row['total_token_throughput']:.1f}   prompt tokens {row['prompt_tokens']} "
          f"(cached {row['cached_tokens']})")
    print(f"   {'ms':<6}{'mean':>10}{'p50':>10}{'p90':>10}{'p99':>10}")
    for name in ("ttft_s", "tpot_s", "itl_s", "e2e_s"):
        stats = row[name]
        values = (stats[k] for k in ("mean", "p50", "p90", "p99"))
        cells = "".join(f"{(v or 0) * 1000:>10.1f}" for v in values)
        print(f"   {name[:-2]:<6}{cells}")


# --- the server under test --------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """A server subprocess on a free port of 127.0.0.1, its output in a log file of a throwaway
    folder; ready when `GET /health` answers 200."""

    def __init__(self, name: str) -> None:
        self.tmp = tempfile.TemporaryDirectory(prefix=f"bench-{name}-")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(self.tmp.name) / "server.log"
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - closed in close()
        self.proc: subprocess.Popen | None = None

    def start(self, cmd: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)

    async def wait_ready(self, timeout_s: float = 600) -> None:
        import aiohttp

        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if self.proc is None or self.proc.poll() is not None:
                    status = self.proc.returncode if self.proc else None
                    raise RuntimeError(f"the server exited (status {status}); its log ended with: "
                                       f"{self.log_tail()}")
                try:
                    async with session.get(self.url + "/health") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.5)
        raise RuntimeError(f"the server was not ready in {timeout_s:.0f} s; its log ended with: "
                           f"{self.log_tail()}")

    def log_tail(self) -> str:
        """The last line of the log (it goes with the folder when the server is closed)."""
        self.log.flush()
        lines = self.log_path.read_text(errors="replace").strip().splitlines()
        return lines[-1][-300:] if lines else "(nothing)"

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        self.tmp.cleanup()


class OwnServer(ServerProcess):
    """`appliance serve` with a throwaway data dir and admin key."""

    def __init__(self, kv_cache_gib: float | None, serve_args: tuple[str, ...] = ()) -> None:
        super().__init__("serve")
        self.key = "bench-" + secrets.token_urlsafe(24)
        env = {**os.environ, "APPLIANCE_ADMIN_KEY": self.key}
        if kv_cache_gib is not None:  # None: the server's default
            env["APPLIANCE_KV_CACHE_GIB"] = str(kv_cache_gib)
        self.start([str(Path(sys.executable).parent / "appliance"), "serve", "--port", str(self.port),
                    "--data-dir", str(Path(self.tmp.name) / "data"), "--log-level", "WARNING",
                    *serve_args], env)


async def _api(session, method: str, url: str, **kwargs) -> tuple[int, dict]:
    async with session.request(method, url, **kwargs) as resp:
        return resp.status, await resp.json(content_type=None)


async def upload_docs(url: str, key: str, collection: str) -> int:
    import aiohttp

    folder = SQUAD / "docs" if (SQUAD / "docs").is_dir() else SAMPLES
    form = aiohttp.FormData()
    files = sorted(folder.glob("*.txt"))
    for path in files:
        form.add_field("file", path.read_bytes(), filename=path.name)
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as session:
        status, body = await _api(session, "POST", f"{url}/v1/collections/{collection}/documents", data=form)
    if status != 200:
        raise RuntimeError(f"upload failed: HTTP {status}: {body}")
    return sum(r["chunks"] for r in body["results"])


async def flush_cache(url: str, key: str) -> bool:
    """Start each phase cold; only possible with an admin key (returns whether it happened)."""
    import aiohttp

    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as session:
        status, _ = await _api(session, "POST", url + "/admin/cache/flush")
    return status == 200


async def model_id(url: str, key: str) -> str:
    import aiohttp

    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as session:
        status, body = await _api(session, "GET", url + "/v1/models")
    if status != 200:
        raise RuntimeError(f"GET /v1/models: HTTP {status}: {body.get('error', body)}")
    return body["data"][0]["id"]


def run_against_server(args: argparse.Namespace, main: Callable[[OwnServer | None], Awaitable[T]]) -> T:
    """Run `main` against --url, or against a server started for it (stopped however main ends)."""
    from appliance.cli import UserError

    server = None if args.url else OwnServer(args.kv_cache_gib)
    try:
        return asyncio.run(main(server))
    except RuntimeError as exc:
        raise UserError(str(exc)) from None
    finally:
        if server is not None:
            server.close()


async def server_url(args: argparse.Namespace, server: OwnServer | None) -> tuple[str, str]:
    """(url, key) of the server under test, once it is ready."""
    if server is None:
        return args.url.rstrip("/"), args.api_key
    print(f"starting appliance serve on {server.url} (log {server.log_path}) ...", flush=True)
    await server.wait_ready()
    return server.url, server.key


# --- the benchmark ----------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    from appliance.cli import UserError

    problem = _check_args(args)
    if problem:
        raise UserError(problem)
    return run_against_server(args, lambda server: _bench(args, server))


def _check_args(args: argparse.Namespace) -> str | None:
    if args.url and not args.api_key:
        return "--url needs --api-key (or APPLIANCE_API_KEY)"
    if args.num_requests < 1 or args.concurrency < 1 or args.max_tokens < 1:
        return "--num-requests, --concurrency and --max-tokens must be >= 1"
    if args.request_rate is not None and not args.request_rate > 0:
        return "--request-rate must be > 0"
    if args.vllm and args.kv_reuse is None:
        return "--vllm needs --kv-reuse"
    if args.kv_reuse is not None:
        modes = [m.strip() for m in args.kv_reuse.split(",") if m.strip()]
        if args.workload != "rag" or not modes or any(m not in ("prefix", "chunks") for m in modes):
            return "--kv-reuse needs --workload rag and takes modes from: prefix, chunks"
        if args.vllm and args.url:
            return "--vllm rebuilds the server's prompts with its default system prompt: leave out --url"
        if not (SQUAD / "questions.jsonl").is_file():
            return f"--kv-reuse draws its questions from {SQUAD}/questions.jsonl, which is missing"
    return None


async def _bench(args: argparse.Namespace, server: OwnServer | None) -> int:
    url, key = await server_url(args, server)
    model = await model_id(url, key)
    if args.workload == "rag" and server:
        print(f"uploaded {await upload_docs(url, key, args.collection)} chunks to '{args.collection}'")
    n, max_tokens = args.num_requests, args.max_tokens
    if args.kv_reuse is not None:
        from appliance.bench.serve_kv_reuse import bench_kv_reuse

        return await bench_kv_reuse(args, url, key)
    if args.workload == "rag":
        workload = rag_workload(args.collection, n, max_tokens, args.seed)
    else:
        make = short_workload if args.workload == "short" else chat_workload
        workload = make(model, n, max_tokens, args.seed)
    shape = f"Poisson {args.request_rate}/s" if args.request_rate else f"concurrency {args.concurrency}"
    print(f"model {model}; workload {args.workload}: {args.num_requests} streamed requests, "
          f"{args.max_tokens} output tokens each; load: {shape}", flush=True)
    await run_load(url, key, Workload(workload.kind, workload.path, workload.bodies[:2]), 1, None, args.seed)
    rows = []
    if not args.no_peer:
        rows.append(await _phase("peer: one request at a time", url, key, workload, 1, None, args.seed))
    rows.append(await _phase(f"load: {shape}", url, key, workload, args.concurrency, args.request_rate,
                             args.seed))
    _report(rows, args)
    return 0 if all(r["failed"] == 0 for r in rows) else 1


async def admin_post(url: str, key: str, path: str, body: dict) -> dict:
    import aiohttp

    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as session:
        status, answer = await _api(session, "POST", url + path, json=body)
    if status != 200:
        raise RuntimeError(f"{path} answered HTTP {status}: {answer}")
    return answer


async def admin_stats(url: str, key: str) -> dict:
    import aiohttp

    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as session:
        status, body = await _api(session, "GET", url + "/admin/stats")
    if status != 200:
        raise RuntimeError(f"/admin/stats answered HTTP {status}: {body}")
    return body


async def _phase(label: str, url: str, key: str, workload: Workload, concurrency: int | None,
                 rate: float | None, seed: int) -> dict:
    flushed = await flush_cache(url, key)
    samples, duration = await run_load(url, key, workload, None if rate else concurrency, rate, seed)
    row = summarize(label, samples, duration)
    row["cache_flushed_before"] = flushed
    print_summary(row)
    return row


def _report(rows: list[dict], args: argparse.Namespace) -> None:
    if len(rows) == 2 and rows[0]["output_token_throughput"] > 0:
        peer, load = rows
        ratio = load["output_token_throughput"] / peer["output_token_throughput"]
        print(f"\noutput token throughput: {ratio:.2f}x the one-at-a-time peer "
              f"({load['output_token_throughput']:.2f} vs {peer['output_token_throughput']:.2f} tok/s)")
    write_json(rows, args)


def write_json(rows: list[dict], args: argparse.Namespace) -> None:
    if args.json_path:
        Path(args.json_path).write_text(json.dumps({"args": {k: v for k, v in vars(args).items()
                                                             if k not in ("func", "api_key")},
                                                    "rows": rows}, indent=2))
