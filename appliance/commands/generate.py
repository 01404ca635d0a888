"""`appliance generate "prompt"`: one completion, text alone on stdout (streamed as it is produced)."""

from __future__ import annotations

import argparse
import logging
import sys

from appliance.cli import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("generate", help="generate a completion for one prompt")
    p.add_argument("prompt", help="the prompt text (or '-' to read it from stdin)")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--min-tokens", type=int, default=0)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--ignore-eos", action="store_true")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--quantization", default="none", choices=["auto", "none", "int8", "int4"],
                   help="weights: none (float) | auto (what the checkpoint carries: int4 for the "
                        "bundled Q4_1) | int8 | int4")
    p.add_argument("--model", default=None, help="GGUF file or HF checkpoint dir (default: bundled)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from engine import CheckpointError, EngineConfig, InvalidRequestError, LLMEngine, SamplingParams

    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    logging.disable(logging.WARNING)
    try:
        params = SamplingParams(max_tokens=args.max_tokens, min_tokens=args.min_tokens,
                                temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                                seed=args.seed, stop=args.stop, ignore_eos=args.ignore_eos)
        config = EngineConfig(model=args.model, device=args.device, dtype=args.dtype,
                              quantization=args.quantization, kv_cache_gib=0.5, max_num_seqs=1)
        engine = LLMEngine(config)
        ids = (engine.tokenizer.apply_chat_template([{"role": "user", "content": prompt}])
               if args.chat else engine.tokenizer.encode(prompt))
        engine.add_request("cli", ids, params)
    except (InvalidRequestError, CheckpointError) as exc:
        raise UserError(str(exc)) from exc
    while engine.has_unfinished():
        for out in engine.step():
            sys.stdout.write(out.text_delta)
            sys.stdout.flush()
    sys.stdout.write("\n")
    return 0
