"""Offline engine throughput on a RAG workload, against HF transformers static batching."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from appliance.bench.workload import chunk_pool_origin, rag_requests


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--num-requests", type=int, default=32)
    p.add_argument("--output-len", type=int, default=32)
    p.add_argument("--hf-batch-size", type=int, default=8, help="static batch size of the HF peer")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                   help="default: float32 on CPU (measured faster here), bfloat16 on CUDA")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--model", default=None,
                   help="GGUF file, HF dir, or random:1b / random:8b (default: bundled SmolLM2)")
    p.add_argument("--quantization", default="none", choices=["auto", "none", "int8", "int4"],
                   help="weights: none (float), auto (what the checkpoint carries), int8, int4")
    p.add_argument("--skip-hf", action="store_true", help="only run our engine")
    p.add_argument("--load-only", action="store_true",
                   help="load the model, print its resident weight bytes and the peak RSS, and stop")


def run(args: argparse.Namespace) -> int:
    import torch

    from engine import EngineConfig, LLMEngine, SamplingParams

    args.dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    engine = LLMEngine(EngineConfig(model=args.model, device=args.device, dtype=args.dtype,
                                    quantization=args.quantization,
                                    kv_cache_gib=0.05 if args.load_only else 2.0, max_num_seqs=256))
    print(load_report(engine, args.quantization))
    if args.load_only:
        return 0
    prompts = [engine.tokenizer.apply_chat_template(r.messages) for r in rag_requests(args.num_requests)]
    params = SamplingParams(max_tokens=args.output_len, temperature=0.0, ignore_eos=True)
    num_prompt = sum(map(len, prompts))
    print(f"workload: {len(prompts)} RAG requests, {num_prompt} prompt tokens "
          f"(mean {num_prompt / len(prompts):.0f}), {args.output_len} output tokens each; "
          f"device {args.device}, dtype {args.dtype}, torch threads {torch.get_num_threads()}; "
          f"{chunk_pool_origin()}")
    engine.generate(prompts[:2], SamplingParams(max_tokens=2, temperature=0.0))  # warm-up
    rows = []
    for cache in (False, True):
        engine.reconfigure(enable_prefix_caching=cache)
        rows.append((f"ours (prefix cache {'on' if cache else 'off'})", *_time_ours(engine, prompts, params)))
    if not args.skip_hf:
        rows.append(("HF transformers static batching", *_time_hf(engine, prompts, args)))
    _report(rows, num_prompt, len(prompts) * args.output_len)
    return 0


def load_report(engine, quantization: str) -> str:
    """Weights' resident bytes and the process's peak RSS so far (KV pool included)."""
    import resource

    from engine.quant.apply import weight_bytes

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    weights = weight_bytes(engine.runner.model) / 2**20
    return (f"model {engine.model_name}, quantization {quantization}: weights {weights:.1f} MiB resident, "
            f"peak RSS {peak / 2**30:.2f} GiB")


def _time_ours(engine, prompts, params) -> tuple[float, int]:
    steps0 = engine.stats().prompt_tokens_total
    t = time.perf_counter()
    results = engine.generate(prompts, params)
    elapsed = time.perf_counter() - t
    assert all(len(r.token_ids) == params.max_tokens for r in results)
    return elapsed, engine.stats().prompt_tokens_total - steps0


def _time_hf(engine, prompts, args) -> tuple[float, int]:
    from transformers import AutoModelForCausalLM

    model = _load_hf(args.model, args.dtype, args.device, AutoModelForCausalLM)
    pad = engine.tokenizer.hf.pad_token_id or 0
    bs = args.hf_batch_size
    _hf_batch(model, prompts[:2], 2, pad, args.device)  # warm-up
    computed = 0
    t = time.perf_counter()
    for i in range(0, len(prompts), bs):
        batch = prompts[i:i + bs]
        computed += len(batch) * max(map(len, batch))  # padded prefill tokens
        out = _hf_batch(model, batch, args.output_len, pad, args.device)
        assert out.shape[1] == max(map(len, batch)) + args.output_len
    return time.perf_counter() - t, computed


def _load_hf(model_arg, dtype, device, auto_cls):
    import torch

    from engine.loader import bundled_model_path

    if model_arg and model_arg.startswith("random:"):
        return _random_hf(model_arg.split(":", 1)[1], dtype, device)
    path = Path(model_arg) if model_arg else bundled_model_path()
    kw = {"dtype": getattr(torch, dtype)}
    if path.suffix == ".gguf":
        return auto_cls.from_pretrained(str(path.parent), gguf_file=path.name, **kw).to(device).eval()
    return auto_cls.from_pretrained(str(path), **kw).to(device).eval()


def _random_hf(name: str, dtype: str, device: str):
    """The same random Llama shape in HF transformers (weights differ; throughput does not care)."""
    import torch
    import transformers

    from engine.loader import RANDOM_SHAPES

    s = RANDOM_SHAPES[name]
    config = transformers.LlamaConfig(
        vocab_size=s["vocab_size"], hidden_size=s["hidden_size"], intermediate_size=s["intermediate_size"],
        num_hidden_layers=s["num_layers"], num_attention_heads=s["num_heads"],
        num_key_value_heads=s["num_kv_heads"], head_dim=s["head_dim"], max_position_embeddings=16384)
    default = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, dtype))
    try:
        with torch.device(device):
            return transformers.LlamaForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(default)


def _hf_batch(model, batch: list[list[int]], new_tokens: int, pad: int, device: str):
    import torch

    width = max(map(len, batch))
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch], device=device)  # left padding
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch], device=device)
    with torch.inference_mode():
        return model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens,
                              min_new_tokens=new_tokens, do_sample=False, pad_token_id=pad)


def _report(rows, num_prompt: int, num_generated: int) -> None:
    peer = rows[-1][1]
    print(f"\n{'system':40} {'seconds':>8} {'prefill tok':>12} {'gen tok/s':>10} {'total tok/s':>12} "
          f"{'vs last':>7}")
    for name, seconds, prefill in rows:
        print(f"{name:40} {seconds:8.2f} {prefill:12d} {num_generated / seconds:10.1f} "
              f"{(num_prompt + num_generated) / seconds:12.1f} {peer / seconds:6.2f}x")
