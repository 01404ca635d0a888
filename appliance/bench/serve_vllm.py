"""vLLM's CPU build as the peer of `bench serve --kv-reuse`: the same RAG prompts, the same load.

A user who glues retrieval to vLLM sends it finished prompts, so vLLM gets exactly the token ids
our server built: each query's chunks come from our `/v1/rag/retrieve` (the same search the query
ran), go through `build_rag_prompt` with the default system prompt, and are tokenized by our
tokenizer. vLLM's own OpenAI server (prefix caching on, as it ships) then gets the warm-up and the
measured queries from the same closed-loop client as ours. Its TTFT starts at the finished prompt,
so it leaves out the retrieval our TTFT includes: the comparison favours vLLM by that much.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from appliance.bench.peers import missing_peer, peers_folder, vllm_paths
from appliance.bench.peers_vllm import vllm_env
from appliance.bench.serve import ServerProcess, Workload, admin_post, print_summary, run_load, summarize

SERVED_NAME = "smollm2"
MAX_MODEL_LEN = 2048
LOAD_TIMEOUT_S = 1800  # the first start compiles the model


class VllmServer(ServerProcess):
    """`vllm serve` from the peers folder's venv on a free port, bound to every core."""

    def __init__(self, peers_dir: Path, dtype: str) -> None:
        super().__init__("vllm")
        python, config = vllm_paths(peers_dir)
        self.start([str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(config.parent),
                    "--served-model-name", SERVED_NAME, "--host", "127.0.0.1", "--port", str(self.port),
                    "--dtype", dtype, "--enable-prefix-caching", "--max-model-len", str(MAX_MODEL_LEN),
                    "--seed", "0"], vllm_env(peers_dir, os.cpu_count() or 1))


async def rag_prompt_ids(url: str, key: str, bodies: list[dict]) -> list[list[int]]:
    """The token ids our server builds for each RAG query body (default system prompt)."""
    from appliance.bench.peers_inputs import load_tokenizer
    from appliance.server.config import ServerConfig
    from rag import build_rag_prompt
    from rag.types import Hit

    tokenizer, system = load_tokenizer(), ServerConfig().rag_system_prompt
    prompts = []
    for body in bodies:
        found = await admin_post(url, key, "/v1/rag/retrieve", {name: body[name] for name in
                                                                ("query", "collection", "top_k")})
        hits = [Hit(**hit) for hit in found["results"]]
        prompt = build_rag_prompt(system, hits, body["query"])
        prompts.append(tokenizer.apply_chat_template(prompt.messages()))
    return prompts


def completion_body(ids: list[int], max_tokens: int) -> dict:
    return {"model": SERVED_NAME, "prompt": ids, "max_tokens": max_tokens, "temperature": 0.0,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}


async def measure_vllm_rag(args: argparse.Namespace, url: str, key: str, warm: list[dict],
                           bodies: list[dict]) -> dict:
    peers_dir = peers_folder(args.peers_dir)
    missing = missing_peer("vllm", peers_dir)
    if missing:
        raise RuntimeError(f"vLLM is not installed: {missing}")
    warm_ids, ids = await rag_prompt_ids(url, key, warm), await rag_prompt_ids(url, key, bodies)
    server = VllmServer(peers_dir, args.vllm_dtype)
    print(f"\nstarting vLLM on {server.url} (log {server.log_path}) ...", flush=True)
    try:
        await server.wait_ready(LOAD_TIMEOUT_S)
        concurrency = None if args.request_rate else args.concurrency
        await run_load(server.url, "none", _workload(warm_ids, args.max_tokens), args.concurrency, None,
                       args.seed)
        samples, duration = await run_load(server.url, "none", _workload(ids, args.max_tokens), concurrency,
                                           args.request_rate, args.seed)
    finally:
        server.close()
    row = summarize(f"vLLM CPU {args.vllm_dtype}, prefix caching, same prompts", samples, duration)
    row["prompt_tokens_built"] = sum(len(p) for p in ids)
    print_summary(row)
    return row


def _workload(prompts: list[list[int]], max_tokens: int) -> Workload:
    return Workload("completion", "/v1/completions", [completion_body(p, max_tokens) for p in prompts])
