"""`appliance eval kv-reuse`: the chunk-reuse quality measurement, end to end on a few questions."""

from __future__ import annotations

import argparse
import re

import pytest

from appliance.bench.kv_reuse_quality import (
    ModeResult,
    RecordingSampler,
    evaluate_batch,
    precompute_chunks,
    question_prompts,
)
from rag.evaluation import load_questions
from tests.rag.cli import appliance
from tests.rag.conftest import SQUAD_DOCS

SYSTEM = "Answer briefly from the context."


def test_full_recompute_agrees_and_reuse_moves_chunks(open_service):
    """Recomputing every chunk token must agree with the reference exactly (KL ~ 0, same answers):
    that checks the teacher-forced alignment. With nothing recomputed, most chunk tokens are moved."""
    from engine import EngineConfig, LLMEngine

    questions = [q for q in load_questions(SQUAD_DOCS) if q.doc == "Normans.txt"][:1]
    service = open_service()
    service.ingest_paths([SQUAD_DOCS / "docs" / "Normans.txt"], "eval", "squad")
    hits = service.retrieve_many("eval", "squad", [q.question for q in questions], 3)
    engine = LLMEngine(EngineConfig(device="cpu", dtype="float32", kv_cache_gib=0.5))
    sampler = engine.sampler = RecordingSampler(engine.sampler)
    precompute_chunks(engine, SYSTEM, [h for q_hits in hits for h in q_hits])
    assert engine.stats().chunk_blocks > 0
    prompts = question_prompts(engine, SYSTEM, questions, hits)
    assert [len(p.spans) for p in prompts] == [3]
    results, reference = {k: ModeResult(recompute=k) for k in (10_000, 0)}, []
    evaluate_batch(engine, sampler, prompts, list(results), 4, results, reference,
                   lambda ids: engine.tokenizer.decode(ids).strip())
    full, reuse = results[10_000], results[0]
    assert full.num_positions == reuse.num_positions == 4
    assert full.kl < 1e-4 and full.top1 == 1.0 and full.correct == reference and full.chunk_hit_tokens == 0
    assert reuse.kl >= 0 and 0 <= reuse.top1 <= 1 and reuse.chunk_share > 0.5
    assert len(reuse.correct) == len(reference) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--limit", "0"], "--limit must be >= 1"), (["--recompute", "4,x"], "--recompute takes"),
     (["--recompute", "-1"], "--recompute takes integers >= 0"), (["--split", "train"], "--split must be")],
)
def test_cli_bad_input_is_one_line_and_nonzero(args, message):
    result = appliance("eval", "kv-reuse", *args)
    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--shares", "0.1,x"], "--shares takes comma-separated numbers"), (["--shares", "1.5"], "from 0 to 1"),
     (["--selections", "head,random"], "--selections takes head, deviation"), (["--limit", "0"], ">= 1")],
)
def test_kv_select_bad_input_is_refused(args, message):
    from appliance.cli import UserError
    from appliance.commands.eval_kv_select import _check, register_kv_select

    parser = argparse.ArgumentParser()
    register_kv_select(parser.add_subparsers())
    with pytest.raises(UserError, match=re.escape(message)):
        _check(parser.parse_args(["kv-select", *args]))


def test_kv_select_bad_input_is_one_line_and_nonzero():
    result = appliance("eval", "kv-select", "--shares", "2")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 and "--shares takes numbers from 0 to 1" in result.stderr
