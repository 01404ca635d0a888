"""`appliance eval kv-reuse`: answer quality with chunk KV reuse against full recompute, on squad-rag.

The squad-rag documents are ingested into a throw-away RagService (the shipped settings), each
question retrieves the server's top-k chunks, and appliance/bench/kv_reuse_quality.py runs the
reference and the chunk-reuse passes per recompute setting (`--recompute 0,16,32`), a batch of
questions at a time (their chunks stored first, then dropped again, so the pool never runs dry).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from appliance.cli import UserError

REPO_ROOT = Path(__file__).resolve().parents[2]


def add_question_arguments(a: argparse.ArgumentParser) -> None:
    """The squad-rag questions an eval of chunk reuse runs on: dataset, split and how many."""
    a.add_argument("--data", type=Path, help="dataset dir (default: ../shared/data/squad-rag by the repo)")
    a.add_argument("--split", default="heldout", help="tune or heldout (default: heldout)")
    a.add_argument("--limit", type=int, default=200, help="questions of the split (default 200)")


def register_kv_reuse(sub: argparse._SubParsersAction) -> None:
    a = sub.add_parser("kv-reuse", help="chunk KV reuse vs full recompute: KL, top-1, answers")
    add_question_arguments(a)
    a.add_argument("--recompute", default="0,16,32",
                   help="chunk_recompute_tokens settings, comma-separated (default 0,16,32)")
    a.add_argument("--max-tokens", type=int, default=32, help="answer length cap (default 32)")
    a.add_argument("--batch", type=int, default=16, help="questions per batch (default 16)")
    a.add_argument("--kv-cache-gib", type=float, default=4.0, help="the engine's KV pool (default 4)")
    a.add_argument("--device", default="auto", help="auto, cpu or cuda (engine and embedder)")
    a.add_argument("--json", type=Path, metavar="PATH", help="write the summary as JSON here")
    a.set_defaults(func=run_kv_reuse)


def _recomputes(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--recompute takes comma-separated integers, got {text!r}") from None
    if not values or any(v < 0 for v in values):
        raise UserError(f"--recompute takes integers >= 0, got {text!r}")
    return values


def _check(args: argparse.Namespace) -> Path:
    from rag.answer_eval import SPLITS
    from rag.evaluation import default_dataset_dir

    if args.split not in SPLITS:
        raise UserError(f"--split must be one of {', '.join(SPLITS)}, got {args.split!r}")
    for name in ("limit", "max_tokens", "batch"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not args.kv_cache_gib > 0:
        raise UserError("--kv-cache-gib must be positive")
    dataset = args.data or default_dataset_dir(REPO_ROOT)
    if not (dataset / "questions.jsonl").is_file():
        raise UserError(f"no evaluation set at {dataset} (expected questions.jsonl and docs/)")
    return dataset


def run_kv_reuse(args: argparse.Namespace) -> int:
    from appliance.bench.kv_reuse_quality import ModeResult
    from appliance.server.config import ServerConfig
    from rag.answer_eval import select_split
    from rag.evaluation import load_questions

    dataset, recomputes = _check(args), _recomputes(args.recompute)
    questions = select_split(load_questions(dataset), args.split, args.limit)
    if not questions:
        raise UserError(f"no questions in split {args.split!r}")
    server = ServerConfig()
    results = {k: ModeResult(recompute=k) for k in recomputes}
    reference: list[bool] = []
    started = time.perf_counter()
    _evaluate(args, dataset, questions, server, results, reference)
    print(f"{len(questions)} questions in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    rows = _rows(results, reference)
    _print(args.split, rows, reference)
    if args.json is not None:
        args.json.write_text(json.dumps({"split": args.split, "n": len(reference), "rows": rows}, indent=1))
    return 0


def _evaluate(args, dataset: Path, questions, server, results, reference) -> None:
    from appliance.bench.kv_reuse_quality import (
        RecordingSampler,
        evaluate_batch,
        precompute_chunks,
        question_prompts,
    )
    from engine import EngineConfig, LLMEngine

    engine = LLMEngine(EngineConfig(device=args.device, kv_cache_gib=args.kv_cache_gib))
    sampler = engine.sampler = RecordingSampler(engine.sampler)
    system, decode = server.rag_system_prompt, lambda ids: engine.tokenizer.decode(ids).strip()
    hits = retrieved(dataset, questions, server.rag_top_k, args.device)
    for start in range(0, len(questions), args.batch):
        batch, batch_hits = questions[start:start + args.batch], hits[start:start + args.batch]
        precompute_chunks(engine, system, [h for q_hits in batch_hits for h in q_hits])
        prompts = question_prompts(engine, system, batch, batch_hits)
        evaluate_batch(engine, sampler, prompts, list(results), args.max_tokens, results, reference, decode)
        engine.flush_prefix_cache()  # the batch's chunks too: the next batch stores its own
        print(f"{start + len(batch)}/{len(questions)} questions", file=sys.stderr, flush=True)


def retrieved(dataset: Path, questions, top_k: int, device: str) -> list[list]:
    """Each question's top-k chunks from the squad-rag documents, ingested with the shipped settings
    into a throw-away RagService."""
    from rag import RagService

    with tempfile.TemporaryDirectory(prefix="appliance-eval-kv-") as tmp:
        service = RagService(Path(tmp), device=device)
        try:
            service.ingest_paths([dataset / "docs"], "eval", "squad-rag")
            return service.retrieve_many("eval", "squad-rag", [q.question for q in questions], top_k, None)
        finally:
            service.close()


def _rows(results, reference: list[bool]) -> list[dict]:
    from appliance.bench.kv_reuse_quality import summary

    rows = [{"mode": "prefix (full recompute)", "recompute": None, "kl": 0.0, "top1": 1.0,
             "contains_gold": sum(reference) / len(reference), "ratio": 1.0, "ratio_low": 1.0,
             "ratio_high": 1.0, "chunk_share": 0.0}]
    for k, r in results.items():
        s = summary(r, reference)
        rows.append({"mode": f"chunks, recompute {k}", "recompute": k, "positions": r.num_positions,
                     "kl": r.kl, "top1": r.top1,
                     "contains_gold": s.rag, "ratio": s.ratio, "ratio_low": s.ratio_low,
                     "ratio_high": s.ratio_high, "chunk_share": r.chunk_share})
    return rows


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _print(split: str, rows: list[dict], reference: list[bool]) -> None:
    print(f"split={split}, n={len(reference)}; KL and top-1 against full recompute over the reference "
          f"answers' tokens; answer contains gold, ratio to full recompute with a 95% paired interval")
    print(f"{'mode':<26} {'KL':>7} {'top-1':>6} {'gold':>6} {'ratio':>6} {'95% interval':>15} "
          f"{'chunk tokens':>12}")
    for r in rows:
        interval = f"[{_fmt(r['ratio_low'])}, {_fmt(r['ratio_high'])}]"
        print(f"{r['mode']:<26} {r['kl']:>7.4f} {r['top1']:>6.3f} {r['contains_gold']:>6.3f} "
              f"{_fmt(r['ratio']):>6} {interval:>15} {r['chunk_share']:>12.1%}")
