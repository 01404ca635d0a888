"""The peers benchmark's HTTP systems: our `appliance serve` and llama.cpp's `llama-server`.

Both get the same streamed load from the same client (`bench serve`'s): ours through the chat API
a user calls (the server applies the chat template), llama-server through its OpenAI text
completions with the very token ids our tokenizer produced, so its own chat template cannot change
the workload. Both run on a free port and are stopped however the measurement ends.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from appliance.bench.peers_inputs import Inputs, Prompt
from appliance.bench.peers_report import Measured
from appliance.bench.serve import OwnServer, ServerProcess, Workload, chat_body, model_id, run_load


@dataclass(slots=True)
class Api:
    """How to send one prompt to a server: endpoint, stream kind and request body."""

    url: str
    key: str
    kind: str  # "chat" | "completion", as bench serve parses the stream
    path: str
    body: Callable[[Prompt, int], dict]
    keep_alive: bool = True  # llama-server drops reused connections after a long stream: False


class LlamaServer(ServerProcess):
    """`llama-server` on the bundled GGUF: `--parallel` slots with continuous batching."""

    def __init__(self, binary: Path, gguf: Path, parallel: int, threads: int, slot_tokens: int,
                 extra: tuple[str, ...] = ()) -> None:
        super().__init__("llama")
        self.start([str(binary), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(self.port),
                    "--parallel", str(parallel), "--cont-batching", "-t", str(threads),
                    "-c", str(parallel * slot_tokens), *extra], dict(os.environ))

    @property
    def crash_signal(self) -> int | None:
        """The signal that killed the server, if one did."""
        code = self.proc.poll() if self.proc is not None else None
        return -code if code is not None and code < 0 else None


async def measure_ours(inputs: Inputs, concurrency: int, serve_args: tuple[str, ...]) -> Measured:
    """`serve_args`: flags of `appliance serve`; otherwise its defaults, as a user starts it."""
    server = OwnServer(None, serve_args)
    try:
        await server.wait_ready()
        model = await model_id(server.url, server.key)
        api = Api(server.url, server.key, "chat", "/v1/chat/completions",
                  lambda prompt, n: chat_body(model, prompt.messages, n))
        name = " ".join(["ours: appliance serve", *serve_args, f"over HTTP, {concurrency} streamed clients"])
        return await measure(name, api, inputs, concurrency)
    finally:
        server.close()


class CrashedWhileLoading(RuntimeError):
    """llama-server was killed by a signal before it was ready."""


async def measure_llama(inputs: Inputs, binary: Path, gguf: Path, parallel: int, threads: int,
                        concurrency: int) -> Measured:
    """A CPU that advertises AMX in a VM that does not enable it kills llama-server's repacked-weight
    (AMX) matmul at its warm-up (SIGILL, or SIGSEGV); then it runs again without weight repacking."""
    settings = (inputs, binary, gguf, parallel, threads, concurrency)
    try:
        return await _measure_llama(*settings, extra=())
    except CrashedWhileLoading as exc:
        print(f"{exc}; again with --no-repack", flush=True)
        return await _measure_llama(*settings, extra=("--no-repack",))


async def _measure_llama(inputs: Inputs, binary: Path, gguf: Path, parallel: int, threads: int,
                         concurrency: int, extra: tuple[str, ...]) -> Measured:
    server = LlamaServer(binary, gguf, parallel, threads, inputs.max_context, extra)
    try:
        try:
            await server.wait_ready()
        except RuntimeError:
            if server.crash_signal is None:
                raise
            name = signal.Signals(server.crash_signal).name
            raise CrashedWhileLoading(f"llama-server was killed by {name} while loading") from None
        api = Api(server.url, "none", "completion", "/v1/completions", _completion_body, keep_alive=False)
        name = " ".join([f"llama-server {gguf.name} ({parallel} slots, -t {threads})", *extra])
        return await measure(f"{name}, {concurrency} clients", api, inputs, concurrency)
    finally:
        server.close()


def _completion_body(prompt: Prompt, max_tokens: int) -> dict:
    return {"prompt": prompt.ids, "max_tokens": max_tokens, "temperature": 0.0, "ignore_eos": True,
            "cache_prompt": True, "stream": True, "stream_options": {"include_usage": True}}


async def measure(name: str, api: Api, inputs: Inputs, concurrency: int) -> Measured:
    """Warm-up, the workload as a closed loop of `concurrency` clients, then the one-stream rounds."""
    await _one(api, inputs.warmup, 2)
    workload = Workload(api.kind, api.path, [api.body(p, inputs.output_len) for p in inputs.workload])
    samples, duration = await run_load(api.url, api.key, workload, concurrency, None, 0, api.keep_alive)
    errors = sorted({s.error or "no tokens" for s in samples if not s.ok})
    if errors:
        raise RuntimeError(f"{len(samples) - sum(s.ok for s in samples)} of {len(samples)} requests "
                           f"failed: {', '.join(errors)}")
    row = Measured(name, duration, sum(s.prompt_tokens for s in samples),
                   sum(s.output_tokens for s in samples))
    if row.num_prompt_tokens != inputs.num_prompt_tokens:
        row.note = (f"the server counted {row.num_prompt_tokens} prompt tokens, the shared inputs have "
                    f"{inputs.num_prompt_tokens}")
    for prompt, max_tokens in inputs.one_stream:
        (row.first_token_s if max_tokens == 1 else row.full_s).append(await _one(api, prompt, max_tokens))
    return row


async def _one(api: Api, prompt: Prompt, max_tokens: int) -> float:
    """Seconds for one request alone, from sending it to its last byte."""
    workload = Workload(api.kind, api.path, [api.body(prompt, max_tokens)])
    [sample], _ = await run_load(api.url, api.key, workload, 1, None, 0, api.keep_alive)
    if not sample.ok or sample.output_tokens != max_tokens:
        raise RuntimeError(f"a single request failed: {sample.error or f'{sample.output_tokens} tokens'}")
    return sample.e2e
