"""`appliance eval kv-select`: which tokens of a reused chunk to compute again, at the same budget.

For each squad-rag question (the server's top-k retrieval and system prompt, as `eval kv-reuse`),
every retrieved chunk is stored the way a precompute does (the only chunk after the system prompt),
then the question's prompt runs with its chunks moved in and, per share, either each chunk's head
("head": what the engine does) or CacheBlend's most-deviating tokens ("deviation") computed again,
the same number of tokens for both. KL and top-1 against full recompute over the reference answer's
tokens, answer-contains-gold, and the share of token-layers computed (appliance/bench/kv_select.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from appliance.cli import UserError
from appliance.commands.eval_kv_reuse import REPO_ROOT, add_question_arguments, retrieved

MAX_STORED = 400  # stored chunks kept between questions (~6 MB each for the bundled model in fp32)


def register_kv_select(sub: argparse._SubParsersAction) -> None:
    a = sub.add_parser("kv-select", help="recompute each chunk's head or its most-deviating tokens")
    add_question_arguments(a)
    a.add_argument("--shares", default="0.05,0.15,0.3",
                   help="shares of each chunk computed again, comma-separated (default 0.05,0.15,0.3)")
    a.add_argument("--selections", default="head,deviation", help="comma-separated, of head, deviation")
    a.add_argument("--max-tokens", type=int, default=32, help="answer length cap (default 32)")
    a.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    a.add_argument("--json", type=Path, metavar="PATH", help="write the summary as JSON here")
    a.set_defaults(func=run_kv_select)


def _check(args: argparse.Namespace) -> tuple[Path, list[float], list[str]]:
    from appliance.bench.kv_select import SELECTIONS
    from rag.answer_eval import SPLITS
    from rag.evaluation import default_dataset_dir

    if args.split not in SPLITS:
        raise UserError(f"--split must be one of {', '.join(SPLITS)}, got {args.split!r}")
    if args.limit < 1 or args.max_tokens < 1:
        raise UserError("--limit and --max-tokens must be >= 1")
    try:
        shares = [float(part) for part in args.shares.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--shares takes comma-separated numbers, got {args.shares!r}") from None
    if not shares or any(not 0 <= share <= 1 for share in shares):
        raise UserError(f"--shares takes numbers from 0 to 1, got {args.shares!r}")
    selections = [part.strip() for part in args.selections.split(",") if part.strip()]
    if not selections or any(s not in SELECTIONS for s in selections):
        raise UserError(f"--selections takes {', '.join(SELECTIONS)}, got {args.selections!r}")
    dataset = args.data or default_dataset_dir(REPO_ROOT)
    if not (dataset / "questions.jsonl").is_file():
        raise UserError(f"no evaluation set at {dataset} (expected questions.jsonl and docs/)")
    return dataset, shares, selections


def run_kv_select(args: argparse.Namespace) -> int:
    from appliance.bench.kv_select import Evaluation, SelectionResult
    from appliance.server.config import ServerConfig
    from engine import EngineConfig, LLMEngine
    from rag.answer_eval import select_split
    from rag.evaluation import load_questions
    from rag.prompt import build_rag_prompt

    dataset, shares, selections = _check(args)
    questions = select_split(load_questions(dataset), args.split, args.limit)
    if not questions:
        raise UserError(f"no questions in split {args.split!r}")
    server = ServerConfig()
    hits = retrieved(dataset, questions, server.rag_top_k, "cpu")
    engine = LLMEngine(EngineConfig(device="cpu", dtype=args.dtype, kv_cache_gib=0.05))
    tokenizer, system = engine.tokenizer, server.rag_system_prompt
    results = {(s, share): SelectionResult(selection=s, share=share) for share in shares for s in selections}
    evaluation = Evaluation(engine.runner.model, tokenizer.eos_token_ids,
                            lambda ids: tokenizer.decode(ids).strip(), args.max_tokens, results)
    started = time.perf_counter()
    for n, (question, q_hits) in enumerate(zip(questions, hits, strict=True), start=1):
        if len(evaluation.stored) > MAX_STORED:
            evaluation.stored.clear()
        for hit in q_hits:
            ids, spans = _ids_and_spans(tokenizer, build_rag_prompt(system, [hit], ""))
            evaluation.store(ids, spans[0])
        ids, spans = _ids_and_spans(tokenizer, build_rag_prompt(system, q_hits, question.question))
        evaluation.question(ids, spans, tuple(question.answers))
        if n % 10 == 0 or n == len(questions):
            print(f"{n}/{len(questions)} questions, {time.perf_counter() - started:.0f} s", file=sys.stderr,
                  flush=True)
    rows = _rows(evaluation)
    _print(args.split, rows, len(evaluation.reference_correct))
    if args.json is not None:
        args.json.write_text(json.dumps({"split": args.split, "n": len(evaluation.reference_correct),
                                         "dtype": args.dtype, "rows": rows}, indent=1))
    return 0


def _ids_and_spans(tokenizer, prompt) -> tuple[list[int], list[tuple[int, int]]]:
    ids, spans = tokenizer.apply_chat_template_with_spans(prompt.messages(), list(prompt.chunk_texts))
    return ids, list(spans)


def _rows(evaluation) -> list[dict]:
    from rag.answer_stats import paired_summary

    reference = evaluation.reference_correct
    rows = [{"selection": "full recompute", "share": 1.0, "compute_share": 1.0, "kl": 0.0, "top1": 1.0,
             "contains_gold": sum(reference) / len(reference), "ratio": 1.0, "ratio_low": 1.0,
             "ratio_high": 1.0}]
    by_share = sorted(evaluation.results.items(), key=lambda item: (item[0][1], item[0][0]))
    for (selection, share), r in by_share:
        s = paired_summary(r.correct, reference)
        rows.append({"selection": selection, "share": share, "compute_share": r.compute_share, "kl": r.kl,
                     "top1": r.top1, "contains_gold": s.rag, "ratio": s.ratio, "ratio_low": s.ratio_low,
                     "ratio_high": s.ratio_high})
    return rows


def _print(split: str, rows: list[dict], n: int) -> None:
    print(f"split={split}, n={n}; KL and top-1 against full recompute over the reference answers' "
          f"tokens; answer contains gold, ratio to full recompute with a 95% paired interval")
    print(f"{'selection':<15} {'share':>6} {'computed':>9} {'KL':>7} {'top-1':>6} {'gold':>6} {'ratio':>6} "
          f"{'95% interval':>15}")
    for r in rows:
        ratio = "n/a" if r["ratio"] is None else f"{r['ratio']:.3f}"
        low, high = (("n/a" if v is None else f"{v:.2f}") for v in (r["ratio_low"], r["ratio_high"]))
        print(f"{r['selection']:<15} {r['share']:>6.2f} {r['compute_share']:>9.1%} {r['kl']:>7.4f} "
              f"{r['top1']:>6.3f} {r['contains_gold']:>6.3f} {ratio:>6} {'[' + low + ', ' + high + ']':>15}")
