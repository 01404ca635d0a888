"""Quality of each weight quantization against the float weights on a fixed text: KL, top-1, perplexity.

Every mode loads the same checkpoint; each position's next-token distribution comes from our engine
(the logits it samples from), one prefix at a time with the prefix cache on, so each position costs
at most a block of new tokens. Also prints each mode's resident weight bytes and one stream's decode
speed (with the load average beside it: only a quiet machine's speed means anything).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
TEXTS = ("varnholm-lighthouse.txt", "brindle-street-bakery.txt")  # the fixed text: both, in this order
MODES = ("none", "int8", "int4")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="GGUF file or HF dir (default: bundled SmolLM2 Q4_1)")
    p.add_argument("--num-tokens", type=int, default=512, help="at most this many positions scored")
    p.add_argument("--decode-tokens", type=int, default=64, help="tokens of the one-stream decode run")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])


def run(args: argparse.Namespace) -> int:
    import torch

    rows, reference = [], None
    for mode in MODES:
        engine = _engine(args, mode)
        ids = engine.tokenizer.encode(fixed_text())[:args.num_tokens + 1]
        logprobs = _position_logprobs(engine, ids).double()
        reference = logprobs if reference is None else reference
        rows.append((mode, _weight_mib(engine), *_scores(reference, logprobs, torch.tensor(ids[1:])),
                     _decode_tok_s(engine, ids[:16], args.decode_tokens)))
        del engine
    print(f"text: appliance/samples/{{{','.join(TEXTS)}}}, {len(ids) - 1} positions; dtype {args.dtype}; "
          f"load average {os.getloadavg()[0]:.2f}; reference: quantization none")
    print("| weights | resident MiB | KL vs none (nats/token) | top-1 agreement | perplexity "
          "| decode tok/s |")
    print("|---|---:|---:|---:|---:|---:|")
    for mode, mib, kl, top1, ppl, tok_s in rows:
        print(f"| {mode} | {mib:.1f} | {kl:.4f} | {top1:.1%} | {ppl:.3f} | {tok_s:.1f} |")
    return 0


def fixed_text() -> str:
    return "\n\n".join((SAMPLES / name).read_text() for name in TEXTS)


class LogitsRecorder:
    """Stands in for the model's compute_logits and keeps every result."""

    def __init__(self, compute_logits) -> None:
        self.compute_logits = compute_logits
        self.outputs = []

    def __call__(self, hidden):
        logits = self.compute_logits(hidden)
        self.outputs.append(logits)
        return logits


def _engine(args, mode: str):
    from engine import EngineConfig, LLMEngine

    return LLMEngine(EngineConfig(model=args.model, device="cpu", dtype=args.dtype, quantization=mode,
                                  kv_cache_gib=0.1, max_num_seqs=1))


def _position_logprobs(engine, ids: list[int]):
    """[len(ids) - 1, vocab] log-probabilities of the token after each prefix ids[:i + 1]."""
    import torch

    from engine import SamplingParams

    model = engine.runner.model
    recorder = model.compute_logits = LogitsRecorder(model.compute_logits)
    try:
        for i in range(1, len(ids)):
            engine.generate([ids[:i]], SamplingParams(max_tokens=1, temperature=0.0))
    finally:
        del model.compute_logits  # back to the class's method
    assert len(recorder.outputs) == len(ids) - 1
    return torch.cat([c[-1:] for c in recorder.outputs]).float().log_softmax(-1)


def _scores(ref, got, targets) -> tuple[float, float, float]:
    kl = (ref.exp() * (ref - got)).sum(-1).mean().item()
    top1 = (ref.argmax(-1) == got.argmax(-1)).double().mean().item()
    ppl = got.gather(1, targets[:, None]).mean().neg().exp().item()
    return kl, top1, ppl


def _weight_mib(engine) -> float:
    from engine.quant.apply import weight_bytes

    return weight_bytes(engine.runner.model) / 2**20


def _decode_tok_s(engine, prompt: list[int], num_tokens: int) -> float:
    from engine import SamplingParams

    engine.add_request("decode", prompt, SamplingParams(max_tokens=num_tokens, temperature=0.0,
                                                         ignore_eos=True))
    engine.step()  # the prefill (and the first token)
    t = time.perf_counter()
    steps = 0
    while engine.has_unfinished():
        engine.step()
        steps += 1
    return steps / (time.perf_counter() - t)
