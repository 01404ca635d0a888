"""`appliance eval answers`: answer-contains-gold of RAG answers against oracle-context answers.

Wires the pieces the server uses into rag/answer_eval.py: a throw-away RagService with the shipped
(or overridden) settings ingests the squad-rag documents, retrieval is the server's default mode,
prompts are rag/prompt.py's through the model's chat template, and the engine runs in-process with
its default EngineConfig, greedy. Every prompt of a run goes to the engine at once (continuous
batching is much faster than one prompt at a time). Several configs can be compared in one run:
`--k 2,3`, `--order canonical,relevance`, `--system server,short` make their cross product.
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
MAX_TOKENS = 48
GENERATE_SLICE = 256  # prompts handed to the engine per call: keeps its batch full, shows progress


def register_answers(sub: argparse._SubParsersAction, add_settings_arguments) -> None:
    a = sub.add_parser("answers", help="RAG answers vs oracle-context answers on squad-rag")
    a.add_argument("--data", type=Path, help="dataset dir (default: ../shared/data/squad-rag by the repo)")
    a.add_argument("--split", default="heldout", help="tune or heldout (default: heldout)")
    a.add_argument("--limit", type=int, help="only the first N questions of the split")
    a.add_argument("--k", default=None, help="chunks in the prompt, comma-separated (default: the server's)")
    a.add_argument("--order", default="canonical", help="chunk order(s): canonical, relevance")
    a.add_argument("--system", default="server", help="system prompt(s): server, short")
    a.add_argument("--max-tokens", type=int, default=MAX_TOKENS, help="answer length cap (default 48)")
    add_settings_arguments(a)
    a.add_argument("--device", default="auto", help="auto, cpu or cuda (engine and embedder)")
    a.add_argument("--json", type=Path, metavar="PATH", help="write per-question rows (JSON lines) here")
    a.set_defaults(func=run_answers)


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _ints(text: str, name: str) -> list[int]:
    try:
        values = [int(part) for part in _csv(text)]
    except ValueError:
        raise UserError(f"{name} takes comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise UserError(f"{name} takes integers >= 1, got {text!r}")
    return values


def _configs(args: argparse.Namespace, default_k: int, systems: dict[str, str]):
    from rag.answer_eval import PromptConfig
    from rag.prompt import CHUNK_ORDERS

    ks = _ints(args.k, "--k") if args.k is not None else [default_k]
    orders, names = _csv(args.order), _csv(args.system)
    if not orders or any(o not in CHUNK_ORDERS for o in orders):
        raise UserError(f"--order takes a comma-separated subset of {', '.join(CHUNK_ORDERS)}")
    if not names or any(n not in systems for n in names):
        raise UserError(f"--system takes a comma-separated subset of {', '.join(systems)}")
    return [PromptConfig(n, o, k) for n in names for o in orders for k in ks]


def _check_args(args: argparse.Namespace) -> Path:
    from rag.answer_eval import SPLITS
    from rag.evaluation import default_dataset_dir

    if args.split not in SPLITS:
        raise UserError(f"--split must be one of {', '.join(SPLITS)}, got {args.split!r}")
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be >= 1, got {args.limit}")
    if args.max_tokens < 1:
        raise UserError(f"--max-tokens must be >= 1, got {args.max_tokens}")
    if args.device not in ("auto", "cpu", "cuda"):
        raise UserError(f"--device must be auto, cpu or cuda, got {args.device!r}")
    dataset = args.data or default_dataset_dir(REPO_ROOT)
    if not (dataset / "questions.jsonl").is_file():
        raise UserError(f"no evaluation set at {dataset} (expected questions.jsonl and docs/)")
    return dataset


def engine_generate(engine, max_tokens: int):
    """`generate(messages list) -> answers`: chat template, greedy, answers stripped as the server does."""
    from engine import SamplingParams

    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)

    def generate(batch: list[list[dict]]) -> list[str]:
        answers: list[str] = []
        started = time.perf_counter()
        for start in range(0, len(batch), GENERATE_SLICE):
            prompts = [engine.tokenizer.apply_chat_template(m) for m in batch[start:start + GENERATE_SLICE]]
            answers += [r.text.strip() for r in engine.generate(prompts, params)]
            print(f"generated {len(answers)}/{len(batch)} answers in {time.perf_counter() - started:.0f} s",
                  file=sys.stderr, flush=True)
        return answers

    return generate


def run_answers(args: argparse.Namespace) -> int:
    from appliance.server.config import ServerConfig
    from rag.answer_eval import SHORT_SYSTEM_PROMPT, select_split
    from rag.evaluation import load_questions

    dataset = _check_args(args)
    server = ServerConfig()
    systems = {"server": server.rag_system_prompt, "short": SHORT_SYSTEM_PROMPT}
    configs = _configs(args, server.rag_top_k, systems)
    questions = select_split(load_questions(dataset), args.split, args.limit)
    if not questions:
        raise UserError(f"no questions in split {args.split!r}")
    results = _evaluate(args, dataset, questions, configs, systems)
    if args.json is not None:
        _write_rows(args.json, results)
    _print_table(args.split, results)
    return 0


def _evaluate(args, dataset: Path, questions, configs, systems):
    from appliance.commands.eval import settings_from_args
    from engine import EngineConfig, LLMEngine
    from rag import RagService
    from rag.answer_eval import evaluate_answers, load_doc_texts

    settings = settings_from_args(args)
    engine = LLMEngine(EngineConfig(device=args.device))
    with tempfile.TemporaryDirectory(prefix="appliance-eval-answers-") as tmp:
        service = RagService(Path(tmp), device=args.device, settings=settings)
        try:
            service.ingest_paths([dataset / "docs"], "eval", "squad-rag")
            return evaluate_answers(
                questions, load_doc_texts(dataset, questions), configs, systems,
                lambda queries, k: service.retrieve_many("eval", "squad-rag", queries, k, None),
                engine_generate(engine, args.max_tokens),
            )
        finally:
            service.close()


def _write_rows(path: Path, results) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for result in results:
            for row in result.rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _print_table(split: str, results) -> None:
    print(f"split={split}; answer contains gold (normalised); 95% paired-bootstrap intervals")
    print(f"{'config':<28} {'n':>4} {'recall@k':>8} {'rag':>6} {'oracle':>6} {'rag/oracle':>10} "
          f"{'95% interval':>15} {'rag-oracle':>10} {'95% interval':>17}")
    for r in results:
        s = r.summary
        print(f"{r.config.label():<28} {s.n:>4} {r.recall:>8.3f} {s.rag:>6.3f} {s.oracle:>6.3f} "
              f"{_fmt(s.ratio):>10} {'[' + _fmt(s.ratio_low) + ', ' + _fmt(s.ratio_high) + ']':>15} "
              f"{s.diff:>+10.3f} {f'[{s.diff_low:+.3f}, {s.diff_high:+.3f}]':>17}")
