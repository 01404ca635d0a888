"""Batched sampling: greedy, temperature, top-k, top-p, per-request seeds, min_tokens.

Seeded requests draw their noise from their own generator, so the same seed gives the same tokens
whatever else shares the batch.
"""

from __future__ import annotations

import torch

from engine.sequence import Sequence


class Sampler:
    def __init__(self, seed: int = 0) -> None:
        self.generator = torch.Generator().manual_seed(seed)
        self.seq_generators: dict[str, torch.Generator] = {}

    def forget(self, request_id: str) -> None:
        self.seq_generators.pop(request_id, None)

    @torch.inference_mode()
    def __call__(self, logits: torch.Tensor, seqs: list[Sequence], eos_ids: frozenset[int]) -> list[int]:
        """logits: [num_seqs, vocab] float32 -> one token id per sequence."""
        logits = logits.cpu()
        self._suppress_stops(logits, seqs, eos_ids)
        greedy = [s.params.is_greedy for s in seqs]
        out = logits.argmax(dim=-1)
        if all(greedy):
            return out.tolist()
        idx = [i for i, g in enumerate(greedy) if not g]
        sampled = self._sample(logits[idx], [seqs[i] for i in idx])
        out[idx] = sampled
        return out.tolist()

    @staticmethod
    def _suppress_stops(logits: torch.Tensor, seqs: list[Sequence], eos_ids: frozenset[int]) -> None:
        """Below min_tokens, EOS and stop token ids cannot be chosen."""
        for i, seq in enumerate(seqs):
            if seq.num_output_tokens < seq.params.min_tokens:
                banned = set(seq.params.stop_token_ids) | (set() if seq.params.ignore_eos else eos_ids)
                if banned:
                    logits[i, list(banned)] = float("-inf")

    def _sample(self, logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
        temps = torch.tensor([s.params.temperature for s in seqs], dtype=torch.float32)
        logits = logits / temps[:, None]
        logits = apply_top_k_top_p(logits, seqs)
        probs = logits.softmax(dim=-1)
        noise = torch.stack([self._noise(s, probs.shape[1]) for s in seqs])
        # Exponential race: argmax(p / E) with E ~ Exp(1) draws from p, with one noise row per request.
        return (probs / noise).argmax(dim=-1)

    def _noise(self, seq: Sequence, vocab: int) -> torch.Tensor:
        gen = self.generator
        if seq.params.seed is not None:
            gen = self.seq_generators.get(seq.request_id)
            if gen is None:
                gen = torch.Generator().manual_seed(seq.params.seed)
                self.seq_generators[seq.request_id] = gen
        return torch.empty(vocab).exponential_(generator=gen).clamp_min_(1e-10)


def apply_top_k_top_p(logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
    top_k = [s.params.top_k for s in seqs]
    top_p = [s.params.top_p for s in seqs]
    if all(k == 0 for k in top_k) and all(p >= 1.0 for p in top_p):
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    vocab = logits.shape[1]
    ks = torch.tensor([k if k > 0 else vocab for k in top_k])
    ranks = torch.arange(vocab)[None, :]
    drop = ranks >= ks[:, None]
    probs = sorted_logits.masked_fill(drop, float("-inf")).softmax(dim=-1)
    cum_before = probs.cumsum(dim=-1) - probs  # mass of strictly better tokens
    drop |= cum_before >= torch.tensor(top_p)[:, None]
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(1, order, sorted_logits)
