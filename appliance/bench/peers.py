"""Ours over HTTP against vLLM-CPU and llama-server on the same RAG workload, in one run: ratios.

What a user would install instead, measured next to `appliance serve` (default settings) on the
same tokens: `bench engine`'s RAG workload (all requests, fixed output length) and one stream (a
cold ~550-token RAG prompt: prefill tok/s and decode tok/s). vLLM runs offline (`LLM.generate`,
its best case); llama-server and ours get the same streamed HTTP load. The peers are not part of
the project's install: they are built into a peers folder by the scripts in ../shared/peers/, and
a peer that is not there is reported with the command that installs it. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import tempfile
from dataclasses import asdict
from pathlib import Path

from appliance.bench.peers_report import Measured, one_stream, print_one_stream, print_workload
from appliance.bench.workload import chunk_pool_origin

SYSTEMS = ("ours", "offline", "vllm", "llama")  # offline: our engine in process, no HTTP
RECIPES = Path(__file__).resolve().parents[3] / "shared" / "peers"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma-separated, of {', '.join(SYSTEMS)}")
    p.add_argument("--peers-dir", type=Path, default=None,
                   help="where the peers were built (default: $PEERS_DIR, else <tempdir>/peers)")
    p.add_argument("--num-requests", type=int, default=48)
    p.add_argument("--output-len", type=int, default=32, help="output tokens per request (EOS ignored)")
    p.add_argument("--concurrency", type=int, default=16, help="streamed clients of the HTTP systems")
    p.add_argument("--prompt-tokens", type=int, default=550, help="length of the one-stream prompt")
    p.add_argument("--decode-tokens", type=int, default=64, help="output tokens of the one-stream decode")
    p.add_argument("--rounds", type=int, default=3, help="one-stream rounds (the median is kept)")
    p.add_argument("--quantization", default=None, choices=["auto", "none", "int8", "int4"],
                   help="our server's weights (default: appliance serve's default)")
    p.add_argument("--dtype", default=None, choices=["auto", "float32", "bfloat16"],
                   help="our server's compute dtype (default: appliance serve's default)")
    p.add_argument("--llama-parallel", type=int, default=8, help="llama-server slots (--parallel)")
    p.add_argument("--threads", type=int, default=2, help="llama-server threads (-t)")
    p.add_argument("--vllm-dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--json", dest="json_path", default=None, help="also write the results as JSON")


def run(args: argparse.Namespace) -> int:
    from appliance.cli import UserError

    systems, problem = _check_args(args)
    if problem:
        raise UserError(problem)
    peers_dir = peers_folder(args.peers_dir)
    missing = {s: m for s in systems if (m := missing_peer(s, peers_dir))}
    for system, how in missing.items():
        print(f"{system}: not installed: {how}")
    runnable = [s for s in SYSTEMS if s in systems and s not in missing]  # ours first: the ratios' base
    if not runnable:
        return 1
    from appliance.bench.peers_inputs import build_inputs, load_tokenizer

    inputs = build_inputs(load_tokenizer(), args.num_requests, args.output_len, args.prompt_tokens,
                          args.decode_tokens, args.rounds)
    print(f"workload: {args.num_requests} RAG requests, {inputs.num_prompt_tokens} prompt tokens, "
          f"{args.output_len} output tokens each; one stream: {inputs.one_stream_tokens}-token prompt; "
          f"{chunk_pool_origin()}", flush=True)
    rows, failed = [], 0
    for system in runnable:
        try:
            rows.append(_measure(system, inputs, args, peers_dir))
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            print(f"{system}: failed: {exc}", flush=True)
            failed += 1
    print_workload(rows, args.num_requests, args.output_len)
    print_one_stream(rows, inputs.one_stream_tokens, args.decode_tokens)
    if args.json_path:
        _write_json(Path(args.json_path), rows, inputs.one_stream_tokens, args)
    return 1 if failed or not rows else 0


def _check_args(args: argparse.Namespace) -> tuple[list[str], str | None]:
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = sorted(set(systems) - set(SYSTEMS))
    if unknown or not systems:
        return systems, (f"--systems takes a comma-separated list of {', '.join(SYSTEMS)}; got "
                         f"{args.systems!r}")
    counts = ("num_requests", "output_len", "concurrency", "rounds", "llama_parallel", "threads")
    if any(getattr(args, name) < 1 for name in counts):
        return systems, "--" + ", --".join(n.replace("_", "-") for n in counts) + " must be >= 1"
    if args.decode_tokens < 2 or args.prompt_tokens < 1:
        return systems, "--decode-tokens must be >= 2 and --prompt-tokens >= 1"
    return systems, None


def peers_folder(given: Path | None) -> Path:
    """Where the peers were built: `given`, else $PEERS_DIR, else <tempdir>/peers."""
    return given or Path(os.environ.get("PEERS_DIR") or Path(tempfile.gettempdir()) / "peers")


def missing_peer(system: str, peers_dir: Path) -> str | None:
    """None when `system` can run; else how to install it."""
    if system == "vllm" and not all(p.exists() for p in vllm_paths(peers_dir)):
        return f"PEERS_DIR={peers_dir} {RECIPES / 'setup_vllm_cpu.sh'}"
    if system == "llama" and not _llama_binary(peers_dir).exists():
        return f"PEERS_DIR={peers_dir} {RECIPES / 'build_llama_server.sh'}"
    return None


def vllm_paths(peers_dir: Path) -> tuple[Path, Path]:
    return peers_dir / "vllm-venv" / "bin" / "python", peers_dir / "smollm2-hf" / "config.json"


def _llama_binary(peers_dir: Path) -> Path:
    return peers_dir / "llama-build" / "bin" / "llama-server"


def _measure(system: str, inputs, args: argparse.Namespace, peers_dir: Path) -> Measured:
    from appliance.bench.peers_http import measure_llama, measure_ours
    from appliance.bench.peers_vllm import measure_vllm

    print(f"measuring {system} ...", flush=True)
    if system == "ours":
        return asyncio.run(measure_ours(inputs, args.concurrency, serve_flags(args)))
    if system == "offline":
        from appliance.bench.peers_offline import measure_offline

        return measure_offline(inputs, args.quantization, args.dtype)
    if system == "vllm":
        python, config = vllm_paths(peers_dir)
        return measure_vllm(inputs, python, config.parent, args.vllm_dtype, peers_dir)
    from engine.loader import bundled_model_path

    return asyncio.run(measure_llama(inputs, _llama_binary(peers_dir), bundled_model_path(),
                                     args.llama_parallel, args.threads, args.concurrency))


def serve_flags(args: argparse.Namespace) -> tuple[str, ...]:
    """The `appliance serve` flags this run sets; the rest stay the server's defaults."""
    flags: tuple[str, ...] = ()
    for name in ("quantization", "dtype"):
        if getattr(args, name) is not None:
            flags += (f"--{name}", getattr(args, name))
    return flags


def _write_json(path: Path, rows: list[Measured], prompt_tokens: int, args: argparse.Namespace) -> None:
    out = [asdict(row) | {"one_stream": asdict(one_stream(prompt_tokens, row.first_token_s, row.full_s,
                                                          args.decode_tokens))} for row in rows]
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "func"}
    path.write_text(json.dumps({"args": settings, "one_stream_prompt_tokens": prompt_tokens, "rows": out},
                               indent=2))
