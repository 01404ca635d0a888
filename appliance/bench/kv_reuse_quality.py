"""What chunk KV reuse costs in answer quality, against computing every prompt in full.

Every question's RAG prompt (retrieved chunks in canonical order, as `/v1/rag/query` builds it) runs
three ways on one engine, greedy:
- reference: `kv_reuse="prefix"` (exact: the KV of computing the prompt);
- forced, per recompute setting: `kv_reuse="chunks"`, fed the reference's answer tokens one by one,
  so both distributions are compared at the same positions (next-token KL, top-1 agreement);
- free, per recompute setting: `kv_reuse="chunks"`, its own greedy answer, scored like the reference
  (answer contains a gold answer).
Chunks are stored first the way `--precompute-kv` would: each distinct chunk computed once as the
only chunk of a prompt, right after the system prompt. So in a reused prompt the first chunk sits
where it was computed, and the others moved, stitched by their recomputed first tokens. Each pass
runs under its own salt, so no pass hits another's exact prefixes beyond the system prompt.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from engine import ChunkSpec, LLMEngine, SamplingParams
from rag.answer_score import contains_gold
from rag.answer_stats import PairedSummary, paired_summary
from rag.prompt import build_rag_prompt
from rag.types import Hit

PRECOMPUTE_SALT = "kv-reuse-precompute"


@dataclass(slots=True, frozen=True)
class QuestionPrompt:
    qid: str
    ids: list[int]
    spans: tuple[tuple[int, int], ...]
    answers: tuple[str, ...]  # gold answers


@dataclass(slots=True)
class Agreement:
    """Next-token agreement with full recompute, summed over teacher-forced answer positions."""

    num_positions: int = 0
    kl_sum: float = 0.0
    num_top1: int = 0

    def add(self, reference: list[torch.Tensor], other: list[torch.Tensor]) -> None:
        """One answer's log-probabilities, the reference's and the approximation's, position by position."""
        kl, top1, n = kl_and_top1(reference, other)
        self.kl_sum += kl
        self.num_top1 += top1
        self.num_positions += n

    @property
    def kl(self) -> float:
        return self.kl_sum / self.num_positions if self.num_positions else math.nan

    @property
    def top1(self) -> float:
        return self.num_top1 / self.num_positions if self.num_positions else math.nan


@dataclass(slots=True)
class ModeResult(Agreement):
    recompute: int = 0  # chunk_recompute_tokens
    correct: list[bool] = field(default_factory=list)
    prompt_tokens: int = 0
    chunk_hit_tokens: int = 0

    @property
    def chunk_share(self) -> float:
        return self.chunk_hit_tokens / self.prompt_tokens if self.prompt_tokens else 0.0


class RecordingSampler:
    """The engine's sampler, recording each sampled row's log-probabilities, and optionally replacing
    the token it picks by a given one (teacher forcing)."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.forced: dict[str, list[int]] = {}
        self.logprobs: dict[str, list[torch.Tensor]] = {}

    def forget(self, request_id: str) -> None:
        self.inner.forget(request_id)

    def __call__(self, logits: torch.Tensor, seqs: list, eos_ids) -> list[int]:
        tokens = self.inner(logits, seqs, eos_ids)
        rows = logits.float().log_softmax(dim=-1).cpu()
        for i, seq in enumerate(seqs):
            self.logprobs.setdefault(seq.request_id, []).append(rows[i])
            forced = self.forced.get(seq.request_id)
            if forced is not None:
                tokens[i] = forced[seq.num_output_tokens]
        return tokens


def question_prompts(engine: LLMEngine, system: str, questions: list, hits: list[list[Hit]]
                     ) -> list[QuestionPrompt]:
    out = []
    for q, q_hits in zip(questions, hits, strict=True):
        ids, spans = _ids_and_spans(engine, build_rag_prompt(system, q_hits, q.question))
        out.append(QuestionPrompt(q.id, ids, tuple(spans), tuple(q.answers)))
    return out


def _ids_and_spans(engine: LLMEngine, prompt) -> tuple[list[int], list[tuple[int, int]]]:
    return engine.tokenizer.apply_chat_template_with_spans(prompt.messages(), list(prompt.chunk_texts))


def precompute_chunks(engine: LLMEngine, system: str, hits: list[Hit]) -> int:
    """Store each distinct chunk as the only chunk after the system prompt; returns how many."""
    unique = {hit.id: hit for hit in hits}
    params = SamplingParams(max_tokens=1, temperature=0.0)
    for n, hit in enumerate(unique.values()):
        ids, spans = _ids_and_spans(engine, build_rag_prompt(system, [hit], ""))
        engine.add_request(f"precompute-{n}", ids, params, salt=PRECOMPUTE_SALT,
                           chunks=ChunkSpec(tuple(spans), "chunks", public=True))
    _drain(engine)
    engine.flush_prefix_cache(PRECOMPUTE_SALT)  # their prompts' own blocks: only the chunks are kept
    return len(unique)


def _drain(engine: LLMEngine) -> dict[str, list[int]]:
    tokens: dict[str, list[int]] = {}
    while engine.has_unfinished():
        for out in engine.step():
            if out.finish_reason == "error":
                raise RuntimeError(f"{out.request_id} failed: {out.error}")
            tokens.setdefault(out.request_id, []).extend(out.token_ids)
    return tokens


def run_pass(engine: LLMEngine, prompts: list[QuestionPrompt], tag: str, mode: str, max_tokens: int,
             forced: dict[str, list[int]] | None = None) -> dict[str, list[int]]:
    """All prompts at once (continuous batching); returns answer tokens by question id."""
    for p in prompts:
        length = len(forced[p.qid]) if forced else max_tokens
        params = SamplingParams(max_tokens=length, temperature=0.0, ignore_eos=forced is not None)
        engine.add_request(f"{tag}/{p.qid}", p.ids, params, salt=tag,
                           chunks=ChunkSpec(p.spans, mode, public=True))
    tokens = _drain(engine)
    return {p.qid: tokens.get(f"{tag}/{p.qid}", []) for p in prompts}


def kl_and_top1(reference: list[torch.Tensor], other: list[torch.Tensor]) -> tuple[float, int, int]:
    """Sum of KL(reference || other) over positions, top-1 agreements, positions."""
    ref, oth = torch.stack(reference), torch.stack(other)
    kl = (ref.exp() * (ref - oth)).sum(dim=-1)
    return float(kl.sum()), int((ref.argmax(-1) == oth.argmax(-1)).sum()), ref.shape[0]


def evaluate_batch(engine: LLMEngine, sampler: RecordingSampler, prompts: list[QuestionPrompt],
                   recomputes: list[int], max_tokens: int, results: dict[int, ModeResult],
                   reference_correct: list[bool], decode: Callable[[list[int]], str]) -> None:
    """The reference pass, then per recompute setting a forced and a free pass; adds to `results`."""
    sampler.logprobs.clear()
    ref_tokens = run_pass(engine, prompts, "reference", "prefix", max_tokens)
    ref_logprobs = {p.qid: sampler.logprobs.pop(f"reference/{p.qid}") for p in prompts}
    reference_correct += [contains_gold(decode(ref_tokens[p.qid]), list(p.answers)) for p in prompts]
    for k in recomputes:
        engine.scheduler.chunk_recompute_tokens = k
        result, before = results[k], engine.stats().chunk_hit_tokens
        sampler.forced = {f"forced-{k}/{p.qid}": ref_tokens[p.qid] for p in prompts if ref_tokens[p.qid]}
        run_pass(engine, [p for p in prompts if ref_tokens[p.qid]], f"forced-{k}", "chunks", max_tokens,
                 forced={p.qid: ref_tokens[p.qid] for p in prompts})
        sampler.forced = {}
        for p in prompts:
            if ref_tokens[p.qid]:
                result.add(ref_logprobs[p.qid], sampler.logprobs.pop(f"forced-{k}/{p.qid}"))
        free = run_pass(engine, prompts, f"free-{k}", "chunks", max_tokens)
        result.correct += [contains_gold(decode(free[p.qid]), list(p.answers)) for p in prompts]
        result.prompt_tokens += 2 * sum(len(p.ids) for p in prompts)
        result.chunk_hit_tokens += engine.stats().chunk_hit_tokens - before
        sampler.logprobs.clear()
        engine.flush_prefix_cache(f"forced-{k}")
        engine.flush_prefix_cache(f"free-{k}")
    engine.flush_prefix_cache("reference")


def summary(result: ModeResult, reference_correct: list[bool]) -> PairedSummary:
    """Answer-contains-gold with chunk reuse against the reference, paired per question."""
    return paired_summary(result.correct, reference_correct)
