"""`appliance eval retrieval`: recall@1/5/10 on the squad-rag set, for each search mode.
`appliance eval answers`: RAG answers against oracle-context answers (appliance/commands/eval_answers.py).
`appliance eval kv-reuse`: chunk KV reuse against full recompute (appliance/commands/eval_kv_reuse.py).
`appliance eval kv-select`: which chunk tokens to recompute, head or most-deviating (eval_kv_select.py).

The documents are ingested into a throw-away data dir with the settings given (the shipped
defaults unless overridden), then every question is asked; see rag/evaluation.py for what counts
as a hit. Results go to stdout as a table, or JSON with --json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from appliance.cli import UserError

REPO_ROOT = Path(__file__).resolve().parents[2]


def register(subparsers: argparse._SubParsersAction) -> None:
    from appliance.commands.eval_answers import register_answers
    from appliance.commands.eval_kv_reuse import register_kv_reuse
    from appliance.commands.eval_kv_select import register_kv_select

    p = subparsers.add_parser("eval", help="evaluate quality (retrieval recall, answers)")
    sub = p.add_subparsers(dest="eval", metavar="WHAT")
    r = sub.add_parser("retrieval", help="recall@1/5/10 on ../shared/data/squad-rag")
    r.add_argument(
        "--data", type=Path, help="dataset dir (default: ../shared/data/squad-rag beside the repo)"
    )
    r.add_argument("--modes", default="dense,sparse,hybrid", help="comma-separated search modes")
    r.add_argument("--limit", type=int, help="only the first N questions")
    add_settings_arguments(r)
    r.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    r.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    r.set_defaults(func=run_retrieval)
    register_answers(sub, add_settings_arguments)
    register_kv_reuse(sub)
    register_kv_select(sub)
    p.set_defaults(func=lambda args: p.print_help() or 2)


def add_settings_arguments(p: argparse.ArgumentParser) -> None:
    """Overrides of RagSettings, for tuning experiments (defaults: the shipped settings)."""
    p.add_argument("--chunk-tokens", type=int)
    p.add_argument("--overlap-tokens", type=int)
    p.add_argument(
        "--headings",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="prefix each chunk's embedding input with its title/heading path",
    )
    p.add_argument("--rrf-k", type=int)
    p.add_argument("--candidates", type=int, help="candidates per list before fusion")
    p.add_argument("--dense-weight", type=float)
    p.add_argument("--sparse-weight", type=float)
    p.add_argument("--bm25-avg-len", type=float)


def settings_from_args(args: argparse.Namespace):
    from rag import RagSettings

    settings = RagSettings()
    fields = {
        "chunk_tokens": args.chunk_tokens,
        "overlap_tokens": args.overlap_tokens,
        "bm25_avg_len": args.bm25_avg_len,
    }
    settings = replace(settings, **{k: v for k, v in fields.items() if v is not None})
    if args.headings is not None:
        settings = replace(settings, embed_headings=args.headings)
    hybrid = {
        "rrf_k": args.rrf_k,
        "candidates": args.candidates,
        "dense_weight": args.dense_weight,
        "sparse_weight": args.sparse_weight,
    }
    return replace(
        settings, hybrid=replace(settings.hybrid, **{k: v for k, v in hybrid.items() if v is not None})
    )


def run_retrieval(args: argparse.Namespace) -> int:
    from rag import RagService
    from rag.evaluation import default_dataset_dir, evaluate, load_questions
    from rag.settings import SEARCH_MODES

    dataset = args.data or default_dataset_dir(REPO_ROOT)
    if not (dataset / "questions.jsonl").is_file():
        raise UserError(f"no evaluation set at {dataset} (expected questions.jsonl and docs/)")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in SEARCH_MODES for m in modes):
        raise UserError(f"--modes takes a comma-separated subset of {', '.join(SEARCH_MODES)}")
    settings = settings_from_args(args)
    questions = load_questions(dataset, args.limit)
    with tempfile.TemporaryDirectory(prefix="appliance-eval-") as tmp:
        service = RagService(Path(tmp), device=args.device, settings=settings)
        try:
            summary = service.ingest_paths([dataset / "docs"], "eval", "squad-rag")
            reports = []
            for mode in modes:
                started = time.perf_counter()
                report = evaluate(
                    lambda qs, k, m: service.retrieve_many("eval", "squad-rag", qs, k, m), questions, mode
                )
                reports.append({**report.to_dict(), "seconds": round(time.perf_counter() - started, 2)})
        finally:
            service.close()
    _print(args.json, settings, summary.num_chunks, reports)
    return 0


def _print(as_json: bool, settings, num_chunks: int, reports: list[dict]) -> None:
    config = {
        "chunk_tokens": settings.chunk_tokens,
        "overlap_tokens": settings.overlap_tokens,
        "embed_headings": settings.embed_headings,
        "bm25_avg_len": settings.bm25_avg_len,
        "rrf_k": settings.hybrid.rrf_k,
        "candidates": settings.hybrid.candidates,
        "dense_weight": settings.hybrid.dense_weight,
        "sparse_weight": settings.hybrid.sparse_weight,
    }
    if as_json:
        print(json.dumps({"settings": config, "chunks": num_chunks, "results": reports}, indent=2))
        return
    print("settings: " + ", ".join(f"{k}={v}" for k, v in config.items()) + f"; {num_chunks} chunks")
    print(f"{'mode':<8} {'questions':>9} {'recall@1':>9} {'recall@5':>9} {'recall@10':>10}")
    for r in reports:
        recalls = f"{r['recall@1']:>9.4f} {r['recall@5']:>9.4f} {r['recall@10']:>10.4f}"
        print(f"{r['mode']:<8} {r['questions']:>9} {recalls}")
