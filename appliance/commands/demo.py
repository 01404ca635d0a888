"""`appliance demo` (what `make run` runs): serve, load sample documents, ask, then open the dashboard.

Starts the server in this process on its defaults (or APPLIANCE_* settings), creates a `demo` tenant
and a fresh key, uploads the squad-rag articles from ../shared/data/squad-rag/docs when they are there
(else the sample documents shipped in appliance/samples/), asks one RAG question and one chat question
through the HTTP API and prints the answers and the curl lines to try. Then, on a terminal, it opens
the dashboard on the same event loop with the demo's admin key (see demo_keys.py); quitting the
dashboard (q) stops the appliance. Without a terminal (or with --no-dashboard) it prints the
dashboard command, key included, and serves until Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import sys
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TextIO

from appliance.cli import UserError

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
SQUAD_DOCS = Path("../shared/data/squad-rag/docs")
COLLECTION = "demo"
DOC_SUFFIXES = (".txt", ".md", ".html", ".htm", ".pdf")
QUESTIONS = {  # a question each document set can answer
    "squad": "Who founded the Yuan dynasty?",
    "samples": "Who runs the Brindle Street Bakery today?",
}
CHAT_QUESTION = "In one sentence: what is a lighthouse for?"
READY_TIMEOUT_S = 600
Finale = Literal["stop", "serve", "dashboard"]  # what follows the questions (serve: until Ctrl-C)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="start the server, load sample documents and ask a question")
    p.add_argument("--host", default=None, help="listen address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="listen port (default 8080)")
    p.add_argument("--data-dir", default=None, help="state directory (default ./data)")
    p.add_argument("--docs", default=None, help="documents to upload (default: squad-rag docs or samples)")
    p.add_argument("--max-tokens", type=int, default=96, help="answer length cap")
    p.add_argument("--once", action="store_true", help="stop after the demo instead of serving on")
    p.add_argument("--no-dashboard", action="store_true",
                   help="do not open the dashboard on a terminal: print its command and serve on")
    p.set_defaults(func=run)


@dataclass(slots=True)
class DemoPlan:
    docs: list[Path]
    question: str
    max_tokens: int


@dataclass(slots=True, frozen=True)
class DemoKeys:
    tenant: str  # the `demo` tenant's key, for the curl lines
    admin: str  # the dashboard's admin key (its plaintext is also in the data dir's key file)
    admin_file: Path


def pick_docs(explicit: str | None) -> tuple[list[Path], str]:
    """The documents to upload and which question fits them."""
    if explicit:
        folder, kind = Path(explicit), "samples"
    elif SQUAD_DOCS.is_dir():
        folder, kind = SQUAD_DOCS, "squad"
    else:
        folder, kind = SAMPLES, "samples"
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in DOC_SUFFIXES) if folder.is_dir() else []
    if not files:
        raise UserError(f"no documents (.txt, .md, .html, .pdf) in {folder}")
    return files, QUESTIONS[kind]


def make_keys(data_dir: str) -> DemoKeys:
    from appliance.commands.demo_keys import admin_key_path, dashboard_key, tenant_key
    from appliance.server.store import ControlStore

    with closing(ControlStore.open(data_dir)) as store:
        return DemoKeys(tenant_key(store), dashboard_key(store, data_dir), admin_key_path(data_dir))


def run(args: argparse.Namespace) -> int:
    from appliance.server.config import ConfigError, load_config

    overrides = {"host": args.host, "port": args.port, "data_dir": args.data_dir}
    try:
        config = load_config(overrides)
    except ConfigError as exc:
        raise UserError(str(exc)) from None
    docs, question = pick_docs(args.docs)
    keys = make_keys(config.data_dir)
    plan = DemoPlan(docs, question, args.max_tokens)
    return asyncio.run(_main(config, keys, plan, _finale_of(args)))


def _finale_of(args: argparse.Namespace) -> Finale:
    if args.once:
        return "stop"
    return "serve" if args.no_dashboard or not on_terminal() else "dashboard"


def on_terminal() -> bool:
    return sys.stdin.isatty() and sys.stdout.isatty()


async def _main(config, keys: DemoKeys, plan: DemoPlan, finale: Finale) -> int:
    from appliance.server.runner import serve

    stop = asyncio.Event()
    listening: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    print(f"Starting the appliance (state in {os.path.abspath(config.data_dir)}) ...", flush=True)
    server = asyncio.create_task(serve(config, listening.set_result, stop))
    await asyncio.wait({server, listening}, return_when=asyncio.FIRST_COMPLETED)
    if server.done():
        return server.result()
    url = listening.result()
    try:
        if not await _wait_ready(url, server):
            return await server
        await demo_session(url, keys.tenant, plan, sys.stdout)
        await _finale(url, keys, finale)
    except Exception as exc:
        interrupted = stop.is_set()  # after Ctrl-C the server refuses new requests: no failure
        if not interrupted:
            print(f"appliance: error: demo failed: {exc}", file=sys.stderr)
        stop.set()
        code = await server
        return code if interrupted else 1
    if finale != "serve":
        stop.set()
    return await server


async def _finale(url: str, keys: DemoKeys, finale: Finale) -> None:
    if finale == "dashboard":
        from appliance.commands.dashboard import open_in_process

        print("\nOpening the dashboard (q closes it and stops the appliance) ...", flush=True)
        await open_in_process(url, keys.admin)
        print("Dashboard closed: stopping the appliance.", flush=True)
    elif finale == "serve":
        print_dashboard_command(url, keys, sys.stdout)
        print("\nServing until Ctrl-C.", flush=True)


def print_dashboard_command(url: str, keys: DemoKeys, out: TextIO) -> None:
    """The exact command that opens the dashboard on this appliance, with the demo's admin key."""
    script = Path(sys.executable).parent / "appliance"
    program = str(script) if script.exists() else "appliance"
    print(f"\nThe dashboard (admin key also in {keys.admin_file.resolve()}, readable by you only):", file=out)
    print(f"  {shlex.quote(program)} dashboard --url {url} --api-key {shlex.quote(keys.admin)}", file=out,
          flush=True)


async def _wait_ready(url: str, server: asyncio.Task) -> bool:
    import aiohttp

    print("Loading the model and the retrieval service ...", flush=True)
    async with aiohttp.ClientSession() as session:
        for _ in range(int(READY_TIMEOUT_S / 0.5)):
            if server.done():
                return False
            try:
                async with session.get(url + "/health") as resp:
                    if resp.status == 200:
                        return True
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.5)
    raise TimeoutError(f"the server was not ready within {READY_TIMEOUT_S} s")


async def demo_session(url: str, key: str, plan: DemoPlan, out: TextIO) -> dict:
    """Upload, ask a RAG question and a chat question over HTTP, print everything; returns the answers."""
    import aiohttp

    headers = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=1800)) as s:
        await _upload(s, url, plan.docs, out)
        rag = await _ask_rag(s, url, plan, out)
        model = (await _get(s, url + "/v1/models"))["data"][0]["id"]
        chat = await _ask_chat(s, url, model, plan.max_tokens, out)
    _print_try_it(url, key, model, plan.question, out)
    return {"rag": rag, "chat": chat}


async def _get(session, url: str) -> dict:
    async with session.get(url) as resp:
        return await _json_or_raise(resp)


async def _json_or_raise(resp) -> dict:
    body = await resp.json(content_type=None)
    if resp.status != 200:
        message = body.get("error", {}).get("message") if isinstance(body, dict) else body
        raise RuntimeError(f"HTTP {resp.status}: {message}")
    return body


async def _upload(session, url: str, docs: list[Path], out: TextIO) -> None:
    import aiohttp

    print(f"\nUploading {len(docs)} documents to collection '{COLLECTION}' ...", file=out, flush=True)
    for path in docs:  # one request per file, so progress shows as it goes
        form = aiohttp.FormData()
        form.add_field("file", path.read_bytes(), filename=path.name, content_type="application/octet-stream")
        async with session.post(f"{url}/v1/collections/{COLLECTION}/documents", data=form) as resp:
            result = (await _json_or_raise(resp))["results"][0]
        detail = f"{result['chunks']} chunks" if result["status"] != "failed" else result["error"]
        print(f"  {result['status']:<8} {result['source']} ({detail})", file=out, flush=True)


async def _ask_rag(session, url: str, plan: DemoPlan, out: TextIO) -> dict:
    print(f"\nRAG question: {plan.question}\nAnswer: ", end="", file=out, flush=True)
    body = {"query": plan.question, "collection": COLLECTION, "max_tokens": plan.max_tokens, "stream": True}
    answer, final = "", {}
    async with session.post(url + "/v1/rag/query", json=body) as resp:
        if resp.status != 200:
            await _json_or_raise(resp)
        async for event in _sse(resp):
            if "error" in event:
                raise RuntimeError(event["error"]["message"])
            answer += event.get("delta", "")
            print(event.get("delta", ""), end="", file=out, flush=True)
            final = event if "sources" in event else final
    print("\nSources:", file=out)
    for src in final.get("sources", []):
        print(f"  {src['label']} {src['source']} (chunk {src['chunk_index']})", file=out)
    return {"answer": answer, "sources": final.get("sources", []), "usage": final.get("usage")}


async def _ask_chat(session, url: str, model: str, max_tokens: int, out: TextIO) -> str:
    print(f"\nChat question: {CHAT_QUESTION}\nAnswer: ", end="", file=out, flush=True)
    body = {"model": model, "messages": [{"role": "user", "content": CHAT_QUESTION}],
            "max_tokens": max_tokens, "temperature": 0, "stream": True}
    answer = ""
    async with session.post(url + "/v1/chat/completions", json=body) as resp:
        if resp.status != 200:
            await _json_or_raise(resp)
        async for event in _sse(resp):
            if "error" in event:
                raise RuntimeError(event["error"]["message"])
            choices = event["choices"]
            delta = (choices[0]["delta"].get("content") or "") if choices else ""
            answer += delta
            print(delta, end="", file=out, flush=True)
    print(file=out)
    return answer


async def _sse(resp):
    async for raw in resp.content:
        line = raw.decode().strip()
        if line.startswith("data: ") and line != "data: [DONE]":
            yield json.loads(line[len("data: "):])


def _print_try_it(url: str, key: str, model: str, question: str, out: TextIO) -> None:
    rag = json.dumps({"query": question, "collection": COLLECTION})
    chat = json.dumps({"model": model, "messages": [{"role": "user", "content": "Hello!"}]})
    print("\nTry it yourself (this demo key belongs to tenant 'demo'):", file=out)
    print(f"  curl {url}/v1/rag/query -H {shlex.quote('Authorization: Bearer ' + key)} -d {shlex.quote(rag)}",
          file=out)
    print(f"  curl {url}/v1/chat/completions -H {shlex.quote('Authorization: Bearer ' + key)} "
          f"-d {shlex.quote(chat)}", file=out, flush=True)
