"""Which tokens of a reused chunk to compute again: each chunk's head, or the most-deviating ones.

The engine recomputes the first k tokens of every reused chunk (engine/chunk_kv.py): one contiguous
range per chunk fits its one-frontier scheduler. CacheBlend instead computes the first layers of
every token, compares their fresh K/V with the reused ones, and from then on computes only the
tokens whose KV deviates most. Building that into the engine means a scheduler and attention that
compute scattered tokens, so first the question whether it buys quality at the same budget. This
module answers it outside the serving path, on the engine's own model: a dense (unpaged) forward in
which every token's K/V is either computed or taken from its stored chunk (K rotated to the new
position with the engine's `rotate_keys`), and hidden states are carried only for the tokens still
computed. With every token computed it is the full-recompute reference (a test checks it against
the engine's logits).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from appliance.bench.kv_reuse_quality import Agreement
from engine.chunk_kv import rotate_keys
from engine.model import LlamaForCausalLM, apply_rotary
from rag.answer_score import contains_gold

SELECTIONS = ("head", "deviation")
SELECT_LAYER = 1  # deviation: layers 0 and 1 are computed for every token, then the choice is made


@dataclass(slots=True)
class StoredChunk:
    """A chunk's K/V per layer, computed at positions [start, start + len)."""

    start: int
    keys: list[torch.Tensor]  # per layer [tokens, kv_heads, head_dim], rotated at their positions
    values: list[torch.Tensor]


@dataclass(slots=True)
class Prefill:
    """A prompt's K/V per layer, its last hidden state (normed), and the share of token-layers computed."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    last_hidden: torch.Tensor
    compute_share: float


@dataclass(slots=True)
class Reuse:
    """Stored K/V moved to a prompt's positions ([layers, tokens, kv_heads, head_dim]; zeros where a
    token has none) and which tokens have it."""

    keys: torch.Tensor
    values: torch.Tensor
    may_reuse: torch.Tensor  # bool [tokens]


# At SELECT_LAYER, over the tokens computed so far: (fresh K, fresh V, their stored K, stored V,
# which may reuse) -> which of them stay computed.
Chooser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _qkv(layer, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    attn, t = layer.self_attn, h.shape[0]
    qkv = attn.qkv_proj(h)
    qk = apply_rotary(qkv[:, :attn.q_size + attn.kv_size].view(t, -1, attn.head_dim), cos, sin)
    q, k = qk.split([attn.num_heads, attn.num_kv_heads], dim=1)
    return q, k, qkv[:, attn.q_size + attn.kv_size:].view(t, attn.num_kv_heads, attn.head_dim)


def _attend(layer, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
            positions: torch.Tensor) -> torch.Tensor:
    """Queries at `positions` over keys/values of positions 0.. (causal), grouped-query heads."""
    attn = layer.self_attn
    group = attn.num_heads // attn.num_kv_heads
    k, v = keys.repeat_interleave(group, dim=1), values.repeat_interleave(group, dim=1)
    mask = torch.arange(keys.shape[0])[None, :] <= positions[:, None]
    o = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1),
                                       attn_mask=mask, scale=attn.scale)
    return attn.o_proj(o.transpose(0, 1).reshape(q.shape[0], attn.q_size))


def _layer(layer, x: torch.Tensor, cos, sin, active: torch.Tensor, keys: torch.Tensor,
           values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One decoder layer for the `active` tokens (cos/sin at their positions); their fresh K/V are
    written into `keys`/`values`."""
    q, k, v = _qkv(layer, layer.input_layernorm(x), cos, sin)
    keys[active], values[active] = k, v
    x = x + _attend(layer, q, keys, values, active)
    return x + layer.mlp(layer.post_attention_layernorm(x)), k, v


@torch.no_grad()
def prefill(model: LlamaForCausalLM, ids: list[int], reuse: Reuse | None = None,
            computed: torch.Tensor | None = None, chooser: Chooser | None = None,
            num_last: int = 1) -> Prefill:
    """Run a prompt. Without `reuse` every token is computed (full recompute). With it, `computed`
    (bool [tokens], default all) are the tokens computed from layer 0, and `chooser` may narrow them
    at SELECT_LAYER; the rest take their stored K/V. A token without stored KV is always computed.
    The last `num_last` tokens' normed hidden states come back (answer tokens fed in after the
    prompt, for their next-token distributions); they are left out of the compute share."""
    num_tokens, num_layers = len(ids), len(model.model.layers)
    num_prompt = num_tokens - num_last + 1
    positions = torch.arange(num_tokens)
    active = positions if computed is None else positions[computed]
    assert reuse is not None or active.shape[0] == num_tokens, "a token without stored KV must be computed"
    x = model.model.embed_tokens(torch.tensor(ids)[active])
    cos, sin = model.rotary(positions, x.dtype)
    keys, values, token_layers = [], [], 0
    for index, layer in enumerate(model.model.layers):
        if reuse is None:
            shape = (num_tokens, layer.self_attn.num_kv_heads, layer.self_attn.head_dim)
            k_all, v_all = x.new_zeros(shape), x.new_zeros(shape)
        else:
            k_all, v_all = reuse.keys[index].clone(), reuse.values[index].clone()
        x, k, v = _layer(layer, x, cos[active], sin[active], active, k_all, v_all)
        keys.append(k_all)
        values.append(v_all)
        token_layers += int((active < num_prompt).sum())
        if chooser is not None and reuse is not None and index == SELECT_LAYER:
            keep = chooser(k, v, reuse.keys[index][active], reuse.values[index][active],
                           reuse.may_reuse[active])
            active, x = active[keep], x[keep]
    assert active[-num_last:].tolist() == list(range(num_prompt - 1, num_tokens)), "must be computed"
    return Prefill(keys, values, model.model.norm(x[-num_last:]), token_layers / (num_prompt * num_layers))


def with_answer(reuse: Reuse, num_tokens: int) -> Reuse:
    """`reuse` for a prompt followed by `num_tokens` answer tokens (computed: no stored KV)."""
    pad = reuse.keys.new_zeros((reuse.keys.shape[0], num_tokens, *reuse.keys.shape[2:]))
    return Reuse(torch.cat([reuse.keys, pad], 1), torch.cat([reuse.values, pad], 1),
                 torch.cat([reuse.may_reuse, torch.zeros(num_tokens, dtype=torch.bool)]))


def prompt_part(state: Prefill, num_prompt: int) -> Prefill:
    """The state after the prompt alone, from a prefill that fed answer tokens after it (causal: the
    prompt's K/V and its last hidden state do not depend on what follows)."""
    return Prefill([k[:num_prompt] for k in state.keys], [v[:num_prompt] for v in state.values],
                   state.last_hidden[:1], state.compute_share)


@torch.no_grad()
def decode(model: LlamaForCausalLM, state: Prefill, max_tokens: int,
           eos: frozenset[int]) -> tuple[list[int], list[torch.Tensor]]:
    """Greedy answer tokens after a prefill, with the log-probabilities each was chosen from."""
    keys, values = list(state.keys), list(state.values)
    logits = model.compute_logits(state.last_hidden[-1:])[0]
    tokens: list[int] = []
    logprobs: list[torch.Tensor] = []
    while True:
        logprobs.append(logits.log_softmax(-1))
        tokens.append(int(logits.argmax()))
        if tokens[-1] in eos or len(tokens) == max_tokens:
            return tokens, logprobs
        position = torch.tensor([keys[0].shape[0]])
        x = model.model.embed_tokens(torch.tensor(tokens[-1:]))
        cos, sin = model.rotary(position, x.dtype)
        for index, layer in enumerate(model.model.layers):
            shape = (1, *keys[index].shape[1:])
            keys[index] = torch.cat([keys[index], x.new_zeros(shape)])
            values[index] = torch.cat([values[index], x.new_zeros(shape)])
            x, _, _ = _layer(layer, x, cos, sin, position, keys[index], values[index])
        logits = model.compute_logits(model.model.norm(x))[0]


# --- stored chunks and the two selections ----------------------------------------------------------
def store_chunk(model: LlamaForCausalLM, ids: list[int], span: tuple[int, int]) -> StoredChunk:
    """Compute a prompt in full and keep the K/V of one span of it (what a precompute stores)."""
    start, end = span
    done = prefill(model, ids)
    return StoredChunk(start, [k[start:end] for k in done.keys], [v[start:end] for v in done.values])


def moved_reuse(model: LlamaForCausalLM, ids: list[int], spans: list[tuple[int, int]],
                stored: dict[tuple[int, ...], StoredChunk]) -> Reuse:
    """Each span whose tokens were stored gets that chunk's K/V, K rotated to the span's positions."""
    first = model.model.layers[0].self_attn
    num_layers = len(model.model.layers)
    shape = (num_layers, len(ids), first.num_kv_heads, first.head_dim)
    dtype = model.model.embed_tokens.weight.dtype
    reuse = Reuse(torch.zeros(shape, dtype=dtype), torch.zeros(shape, dtype=dtype),
                  torch.zeros(len(ids), dtype=torch.bool))
    for start, end in spans:
        chunk = stored.get(tuple(ids[start:end]))
        if chunk is None:
            continue
        for index in range(num_layers):
            reuse.keys[index, start:end] = rotate_keys(chunk.keys[index], start - chunk.start,
                                                       model.rotary.inv_freq)
            reuse.values[index, start:end] = chunk.values[index]
        reuse.may_reuse[start:end] = True
    return reuse


def head_tokens(spans: list[tuple[int, int]], reuse: Reuse, num_head: Callable[[int], int]) -> torch.Tensor:
    """Bool [tokens]: every token without stored KV, and the first num_head(chunk length) tokens of
    each reused chunk."""
    computed = ~reuse.may_reuse
    for start, end in spans:
        if reuse.may_reuse[start]:
            computed[start:start + min(end - start, num_head(end - start))] = True
    return computed


def share_of(share: float) -> Callable[[int], int]:
    """num_head for head_tokens: that share of each chunk, rounded."""
    return lambda num_tokens: round(share * num_tokens)


def deviation_chooser(num_chosen: int) -> Chooser:
    """CacheBlend's choice: of the tokens that may reuse KV, the `num_chosen` whose fresh K/V at
    SELECT_LAYER are farthest (L2, all heads) from the stored ones stay computed, with every token
    that has no stored KV."""
    def choose(k, v, stored_k, stored_v, may_reuse) -> torch.Tensor:
        deviation = ((k - stored_k).float().pow(2).sum((1, 2)) + (v - stored_v).float().pow(2).sum((1, 2)))
        deviation = deviation.masked_fill(~may_reuse, -1.0)
        keep = ~may_reuse
        top = deviation.topk(min(num_chosen, int(may_reuse.sum()))).indices
        keep[top] = True
        return keep
    return choose


# --- the evaluation -----------------------------------------------------------------------------------
@dataclass(slots=True)
class SelectionResult(Agreement):
    """One selection at one share, summed over questions."""

    selection: str = "head"
    share: float = 0.0
    compute_share_sum: float = 0.0
    correct: list[bool] = field(default_factory=list)

    @property
    def compute_share(self) -> float:
        return self.compute_share_sum / len(self.correct) if self.correct else math.nan


@dataclass(slots=True)
class Evaluation:
    """The model under test, its stored chunks, and what was measured so far."""

    model: LlamaForCausalLM
    eos: frozenset[int]
    text: Callable[[list[int]], str]
    max_tokens: int
    results: dict[tuple[str, float], SelectionResult]
    reference_correct: list[bool] = field(default_factory=list)
    stored: dict[tuple[int, ...], StoredChunk] = field(default_factory=dict)

    def store(self, ids: list[int], span: tuple[int, int]) -> None:
        key = tuple(ids[span[0]:span[1]])
        if key not in self.stored:
            self.stored[key] = store_chunk(self.model, ids, span)

    def question(self, ids: list[int], spans: list[tuple[int, int]], answers: tuple[str, ...]) -> None:
        """Full recompute, then every (selection, share) on the same stored chunks."""
        reference = prefill(self.model, ids)
        ref_tokens, ref_logprobs = decode(self.model, reference, self.max_tokens, self.eos)
        self.reference_correct.append(contains_gold(self.text(ref_tokens), answers))
        reuse = moved_reuse(self.model, ids, spans, self.stored)
        for share in sorted({share for _, share in self.results}):
            head = head_tokens(spans, reuse, share_of(share))
            num_chosen = int((head & reuse.may_reuse).sum())  # the same budget for both selections
            runs = {"head": (head, None), "deviation": (None, deviation_chooser(num_chosen))}
            for selection, (computed, chooser) in runs.items():
                if (selection, share) in self.results:
                    self._score(self.results[(selection, share)], ids, reuse, computed, chooser, ref_tokens,
                                ref_logprobs, answers)

    @torch.no_grad()
    def _score(self, result: SelectionResult, ids: list[int], reuse: Reuse, computed: torch.Tensor | None,
               chooser: Chooser | None, ref_tokens: list[int], ref_logprobs: list[torch.Tensor],
               answers: tuple[str, ...]) -> None:
        """One prefill of the prompt and the reference answer (teacher forcing: the distributions at
        the reference's positions), then the selection's own greedy answer from the prompt's part."""
        extra = len(ref_tokens) - 1
        if computed is not None:
            computed = torch.cat([computed, torch.ones(extra, dtype=torch.bool)])
        state = prefill(self.model, ids + ref_tokens[:-1], with_answer(reuse, extra), computed, chooser,
                        num_last=len(ref_tokens))
        result.add(ref_logprobs, list(self.model.compute_logits(state.last_hidden).log_softmax(-1)))
        free, _ = decode(self.model, prompt_part(state, len(ids)), self.max_tokens, self.eos)
        result.correct.append(contains_gold(self.text(free), answers))
        result.compute_share_sum += state.compute_share
