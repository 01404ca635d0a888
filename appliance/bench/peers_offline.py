"""The peers benchmark's in-process row: our engine's offline `LLMEngine.generate`, no HTTP.

The same inputs as every other system (token ids, all workload requests submitted at once, the
same one-stream rounds), with the settings `appliance serve` would use, so the row next to ours
over HTTP shows what the server adds and the row next to vLLM's offline run compares like with
like. The engine loads on this process's main thread and is dropped before the next system runs.
"""

from __future__ import annotations

import gc
import time

from appliance.bench.peers_inputs import Inputs, Prompt
from appliance.bench.peers_report import Measured


def measure_offline(inputs: Inputs, quantization: str | None, dtype: str | None) -> Measured:
    from engine import EngineConfig, LLMEngine

    overrides = {k: v for k, v in (("quantization", quantization), ("dtype", dtype)) if v is not None}
    engine = LLMEngine(EngineConfig(**overrides))
    try:
        _timed(engine, [inputs.warmup], 2)
        workload_s, num_output = _timed(engine, inputs.workload, inputs.output_len)
        row = Measured(_name(overrides), workload_s, inputs.num_prompt_tokens, num_output)
        for prompt, max_tokens in inputs.one_stream:
            seconds, _ = _timed(engine, [prompt], max_tokens)
            (row.first_token_s if max_tokens == 1 else row.full_s).append(seconds)
        return row
    finally:
        del engine
        gc.collect()


def _timed(engine, prompts: list[Prompt], max_tokens: int) -> tuple[float, int]:
    from engine import SamplingParams

    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    started = time.perf_counter()
    outputs = engine.generate([p.ids for p in prompts], params)
    return time.perf_counter() - started, sum(len(o.token_ids) for o in outputs)


def _name(overrides: dict[str, str]) -> str:
    flags = " ".join(f"--{k} {v}" for k, v in overrides.items())
    return " ".join(filter(None, ["ours: in process, LLMEngine.generate", flags]))
