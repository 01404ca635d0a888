"""The synchronous engine: add requests, step, read outputs. One thread drives it (see async_engine).

One request never fails the others. Whatever can be checked up front is refused in add_request.
In the step, work that belongs to one sequence (its forward pass, its sampling, its detokenizing)
that raises fails that sequence alone, with finish_reason "error"; the rest of the batch goes on.
Only when every sequence fails on its own too is it an engine fault, raised to the caller.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from engine.block_manager import BlockManager
from engine.chunk_kv import ChunkSpec
from engine.config import EngineConfig
from engine.detokenizer import IncrementalDetokenizer
from engine.loader import load_checkpoint
from engine.model_runner import ModelRunner
from engine.outputs import EngineStats, RequestOutput, Usage
from engine.sampler import Sampler
from engine.sampling_params import InvalidRequestError, SamplingParams
from engine.scheduler import ScheduledBatch, Scheduler
from engine.sequence import Sequence
from engine.tokenizer import Tokenizer


@dataclass(slots=True)
class Request:
    seq: Sequence
    detok: IncrementalDetokenizer
    first_output_sent: bool = False
    pin: bool = False  # keep the prompt's full blocks cached for good when it finishes


class LLMEngine:
    def __init__(self, config: EngineConfig | None = None) -> None:
        self.config = config = config or EngineConfig()
        ckpt = load_checkpoint(config.model, config.quantization)
        self.model_config = ckpt.config
        self.model_name = {"gguf": ckpt.path.stem, "hf": ckpt.path.name}.get(ckpt.format, str(ckpt.path))
        self.tokenizer = Tokenizer.from_checkpoint(ckpt)
        self.runner = ModelRunner(config, ckpt)
        del ckpt  # the runner holds its own copy of the weights
        self.max_model_len = config.max_model_len or self.model_config.max_position_embeddings
        self.block_manager = BlockManager(self.runner.num_blocks, config.block_size,
                                          config.enable_prefix_caching)
        self.scheduler = Scheduler(config, self.block_manager)
        self.sampler = Sampler(config.seed)
        self.requests: dict[str, Request] = {}
        self.num_steps = 0
        self.num_prompt_tokens = 0  # prompt tokens computed (prefix-cache hits excluded)
        self.num_generation_tokens = 0
        self.finished_by_reason: dict[str, int] = {}

    # --- requests ----------------------------------------------------------------------------
    def tokenize(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt)
        return list(prompt)

    def add_request(self, request_id: str, prompt: str | list[int], params: SamplingParams,
                    salt: str = "", public_prefix_len: int = 0, pin: bool = False, *,
                    group: str | None = None, weight: float = 1.0,
                    deadline: float | None = None, chunks: ChunkSpec | None = None) -> Sequence:
        """Queue a request. `salt` namespaces its prefix-cache blocks (the tenant); the first
        `public_prefix_len` tokens are shared across all salts instead (e.g. a common system prompt).
        `pin` keeps the prompt's full blocks cached until unpin_all (never evicted, never flushed).
        `group` and `weight` give its fair share (default group: the salt); past `deadline`
        (time.monotonic()) it ends with finish_reason "timeout". `chunks` names the prompt's retrieved
        chunks and whether their stored KV may be reused (chunk_kv.py)."""
        ids = self.tokenize(prompt)
        self.validate(request_id, ids, params, weight)
        chunks = chunks or ChunkSpec()
        chunks.check(len(ids), self.runner.can_reuse_chunks)
        seq = Sequence(request_id, ids, len(ids), params, salt=salt,
                       public_prefix_len=max(0, min(public_prefix_len, len(ids))),
                       group=salt if group is None else group, weight=weight, deadline=deadline,
                       chunk_spans=list(chunks.spans), reuse_chunks=chunks.kv_reuse == "chunks",
                       public_chunks=chunks.public, chunk_namespace=chunks.namespace)
        if not self.block_manager.can_ever_hold(seq, len(ids) + params.max_tokens):
            raise InvalidRequestError(
                f"the request needs {len(ids) + params.max_tokens} tokens of KV cache but only "
                f"{self.block_manager.num_unpinned_tokens} are not pinned; reduce the prompt or "
                "max_tokens, or unpin prefixes", "messages", "context_length_exceeded")
        detok = IncrementalDetokenizer(self.tokenizer, ids, params.stop, params.include_stop_str_in_output)
        self.requests[request_id] = Request(seq, detok, pin=pin)
        self.scheduler.add(seq)
        return seq

    @property
    def context_limit(self) -> int:
        """Prompt plus completion tokens one request may use: the model's context or the KV pool."""
        return min(self.max_model_len, self.block_manager.num_blocks * self.config.block_size)

    def validate(self, request_id: str, ids: list[int], params: SamplingParams,
                 weight: float = 1.0) -> None:
        params.validate()
        if request_id in self.requests:
            raise InvalidRequestError(f"request id {request_id!r} is already running", "request_id")
        if not ids:
            raise InvalidRequestError("the prompt is empty", "prompt")
        vocab = self.model_config.vocab_size
        if any(not 0 <= t < vocab for t in ids):
            raise InvalidRequestError(f"prompt token ids must be in [0, {vocab})", "prompt")
        if any(t >= vocab for t in params.stop_token_ids):
            raise InvalidRequestError(f"stop_token_ids must be in [0, {vocab})", "stop_token_ids")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not (
                weight > 0 and math.isfinite(weight)):
            raise InvalidRequestError("weight must be a positive finite number", "weight")
        limit = self.context_limit
        if len(ids) + params.max_tokens > limit:
            raise InvalidRequestError(
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{len(ids) + params.max_tokens} tokens ({len(ids)} in the prompt, {params.max_tokens} "
                f"for the completion). Please reduce the prompt or max_tokens.",
                "messages", "context_length_exceeded")

    def abort(self, request_id: str) -> RequestOutput | None:
        """Drop a request at once and free its blocks; returns its final output if it was live."""
        req = self.requests.pop(request_id, None)
        if req is None:
            return None
        self.scheduler.remove(req.seq)
        self.sampler.forget(request_id)
        self._count_finish("abort")
        return RequestOutput(request_id, "", [], True, "abort", self._usage(req.seq))

    def has_unfinished(self) -> bool:
        return self.scheduler.has_work()

    # --- the step ----------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """One scheduled step. Also ends requests past their deadline and those that can never fit."""
        outputs = self._expire_deadlines()
        batch = self.scheduler.schedule()
        outputs += [self._fail(seq, "the request can never be scheduled: it needs more KV blocks than "
                                    "are not pinned") for seq in batch.unschedulable]
        if batch.is_empty:
            return outputs
        batch, logits, sample_seqs, failed = self._execute(batch)
        outputs += [self._fail(seq, f"the request failed in the model: {exc}") for seq, exc in failed]
        self.num_prompt_tokens += self.scheduler.postprocess(batch)
        self.num_steps += 1
        for seq, token in zip(sample_seqs, self._sample(logits, sample_seqs), strict=True):
            if isinstance(token, Exception):
                outputs.append(self._fail(seq, f"sampling failed for this request: {token}"))
            else:
                outputs.append(self._append_or_fail(seq, token))
        return outputs

    def _execute(self, batch: ScheduledBatch):
        """Run the model; when the batch raises, run each sequence alone to find the culprits.

        Running a sequence again writes the same KV slots with the same values, so the retry is safe.
        When every sequence fails alone too, the fault is the engine's: it is raised.
        """
        try:
            logits, sample_seqs = self.runner.execute(batch)
            return batch, logits, sample_seqs, []
        except Exception:
            if len(batch.seqs) == 1:
                raise
        rows, sample_seqs, failed = [], [], []
        for i, seq in enumerate(batch.seqs):
            try:
                logits, sampled = self.runner.execute(batch.only(i))
            except Exception as exc:
                failed.append((seq, exc))
                continue
            if sampled:
                rows.append(logits)
                sample_seqs += sampled
        if len(failed) == len(batch.seqs):
            raise failed[0][1]
        logits = torch.cat(rows) if rows else torch.empty(0)
        return batch.without([s for s, _ in failed]), logits, sample_seqs, failed

    def _sample(self, logits: torch.Tensor, seqs: list[Sequence]) -> list[int | Exception]:
        """One token per sequence; a sequence whose sampling raises gets its exception instead."""
        if not seqs:
            return []
        eos = self.tokenizer.eos_token_ids
        try:
            return self.sampler(logits, seqs, eos)
        except Exception:
            pass
        tokens: list[int | Exception] = []
        for i, seq in enumerate(seqs):
            try:
                tokens.append(self.sampler(logits[i:i + 1], [seq], eos)[0])
            except Exception as exc:
                tokens.append(exc)
        return tokens

    def _append_or_fail(self, seq: Sequence, token: int) -> RequestOutput:
        try:
            return self._append(seq, token)
        except Exception as exc:
            return self._fail(seq, f"the request failed while decoding its output: {exc}")

    def _fail(self, seq: Sequence, message: str) -> RequestOutput:
        """End one request with finish_reason "error"; the others are not touched."""
        self._finish(self.requests[seq.request_id], "error")
        return RequestOutput(seq.request_id, "", [], True, "error", self._usage(seq), error=message)

    def _expire_deadlines(self) -> list[RequestOutput]:
        now = time.monotonic()
        late = [r for r in self.requests.values() if r.seq.deadline is not None and now >= r.seq.deadline]
        return [self._end_early(r, "timeout") for r in late]

    def _end_early(self, req: Request, reason: str) -> RequestOutput:
        """Finish a request before its natural end, handing out the text it still held back."""
        req.detok.flush()
        text = req.detok.take_delta(finished=True)
        self._finish(req, reason)
        return RequestOutput(req.seq.request_id, text, [], True, reason, self._usage(req.seq))

    def _append(self, seq: Sequence, token: int) -> RequestOutput:
        req = self.requests[seq.request_id]
        seq.token_ids.append(token)
        self.num_generation_tokens += 1
        reason = self._stop_reason(req, token)
        if reason is not None:
            self._finish(req, reason)
        text = req.detok.take_delta(finished=reason is not None)
        out = RequestOutput(seq.request_id, text, [token], reason is not None, reason, self._usage(seq))
        if not req.first_output_sent:
            req.first_output_sent = True
            first = seq.first_scheduled_time or time.monotonic()
            out.queue_time_s = first - seq.arrival_time
            out.scheduled_at = first
        return out

    def _stop_reason(self, req: Request, token: int) -> str | None:
        seq, p = req.seq, req.seq.params
        can_stop = seq.num_output_tokens >= max(p.min_tokens, 1)
        if can_stop and (token in p.stop_token_ids
                         or (not p.ignore_eos and token in self.tokenizer.eos_token_ids)):
            req.detok.flush()
            return "stop"
        req.detok.add_token(token)
        if can_stop and req.detok.find_stop():
            return "stop"
        if seq.num_output_tokens >= p.max_tokens or seq.num_tokens >= self.max_model_len:
            req.detok.flush()
            req.detok.find_stop()
            return "length"
        return None

    def _finish(self, req: Request, reason: str) -> None:
        req.seq.finish_reason = reason
        if req.pin and reason in ("stop", "length"):
            self.block_manager.pin(req.seq)
        self.scheduler.remove(req.seq)
        self.sampler.forget(req.seq.request_id)
        del self.requests[req.seq.request_id]
        self._count_finish(reason)

    def _count_finish(self, reason: str) -> None:
        self.finished_by_reason[reason] = self.finished_by_reason.get(reason, 0) + 1

    @staticmethod
    def _usage(seq: Sequence) -> Usage:
        return Usage(seq.num_prompt_tokens, seq.num_output_tokens, seq.num_cached_tokens)

    def reconfigure(self, num_blocks: int | None = None, max_num_batched_tokens: int | None = None,
                    max_num_seqs: int | None = None, enable_prefix_caching: bool | None = None) -> None:
        """Re-plan the scheduler and block pool over the loaded weights (no request may be live).

        Benchmarks use it to compare cache on/off in one run; tests to force block pressure.
        """
        assert not self.has_unfinished(), "reconfigure needs an idle engine"
        c = self.config
        if max_num_batched_tokens is not None:
            c.max_num_batched_tokens = max_num_batched_tokens
        if max_num_seqs is not None:
            c.max_num_seqs = max_num_seqs
        if enable_prefix_caching is not None:
            c.enable_prefix_caching = enable_prefix_caching
        blocks = min(num_blocks or self.runner.num_blocks, self.runner.num_blocks)
        self.block_manager = BlockManager(blocks, c.block_size, c.enable_prefix_caching)
        self.scheduler = Scheduler(c, self.block_manager)

    # --- operator actions and stats ----------------------------------------------------------
    def flush_prefix_cache(self, salt: str | None = None) -> int:
        """Drop unreferenced cached prefixes, only `salt`'s when given (pinned stay); returns blocks freed."""
        return self.block_manager.flush(salt)

    def erase_salt(self, salt: str) -> int:
        """Forget every cached block under `salt`, pinned ones too (a deleted tenant); returns blocks
        freed. Blocks that live requests still hold stay until those requests end."""
        self.block_manager.unpin_all(salt)
        return self.block_manager.flush(salt)

    def reset_after_fault(self) -> list[str]:
        """After an engine fault: end every request and drop the cached KV; returns the ids ended."""
        ids = list(self.requests)
        for request_id in ids:
            self.abort(request_id)
        self.block_manager.flush()
        return ids

    def unpin_all(self) -> int:
        return self.block_manager.unpin_all()

    def pin_chunk(self, salt: str, token_ids: list[int]) -> int:
        """Pin a stored chunk (kv_reuse "chunks") so no eviction drops it; returns blocks pinned."""
        return self.block_manager.pin_chunk(salt, token_ids)

    def stats(self) -> EngineStats:
        bm = self.block_manager
        return EngineStats(
            block_size=bm.block_size, num_blocks=bm.num_blocks, used_blocks=bm.num_live_blocks,
            cached_blocks=bm.num_reusable_blocks, free_blocks=bm.num_free_blocks,
            shared_blocks=bm.num_shared_blocks(), pinned_blocks=bm.num_pinned_blocks(),
            num_running=self.scheduler.num_running, num_waiting=self.scheduler.num_waiting,
            num_preemptions=self.scheduler.num_preemptions, prompt_tokens_total=self.num_prompt_tokens,
            generation_tokens_total=self.num_generation_tokens,
            prefix_query_tokens=bm.num_query_tokens, prefix_hit_tokens=bm.num_hit_tokens,
            num_steps=self.num_steps, requests_finished=dict(self.finished_by_reason),
            num_evictions=bm.num_evictions, chunk_hit_tokens=bm.num_chunk_hit_tokens,
            chunk_recomputed_tokens=bm.num_chunk_recomputed_tokens, chunk_blocks=bm.num_chunk_blocks,
            chunk_query_tokens=bm.num_chunk_query_tokens,
            chunk_prefix_hit_tokens=bm.num_chunk_prefix_hit_tokens,
        )

    # --- offline use -------------------------------------------------------------------------
    def generate(self, prompts: list[str | list[int]], params: SamplingParams | list[SamplingParams]
                 ) -> list[GenerationResult]:
        """Run prompts to completion in one continuous batch (bench, tests, the CLI)."""
        plist = params if isinstance(params, list) else [params] * len(prompts)
        ids = [f"offline-{self.num_steps}-{i}" for i in range(len(prompts))]
        results = {i: GenerationResult() for i in ids}
        for rid, prompt, p in zip(ids, prompts, plist, strict=True):
            self.add_request(rid, prompt, p)
        while self.has_unfinished():
            for out in self.step():
                results[out.request_id].extend(out)
        return [results[i] for i in ids]


@dataclass(slots=True)
class GenerationResult:
    text: str = ""
    token_ids: list[int] | None = None
    finish_reason: str | None = None
    usage: Usage | None = None

    def extend(self, out: RequestOutput) -> None:
        self.text += out.text_delta
        self.token_ids = (self.token_ids or []) + out.token_ids
        if out.finished:
            self.finish_reason, self.usage = out.finish_reason, out.usage
