"""Runs one scheduled step: builds the flattened inputs, runs the model, returns logits to sample."""

from __future__ import annotations

import logging
import os
from itertools import chain

import torch

from engine.attention import AttentionMetadata, get_backend
from engine.chunk_kv import apply_moves, apply_saves
from engine.config import EngineConfig, ModelConfig
from engine.cpu_linear import can_use_small_batch_linears, use_small_batch_linears
from engine.loader import Checkpoint
from engine.model import LlamaForCausalLM, rope_inv_freq
from engine.packed_linear import can_pack, pack_linears
from engine.quant.apply import install_quantized
from engine.quant.random_init import random_quantized_model
from engine.scheduler import ScheduledBatch
from engine.sequence import Sequence

log = logging.getLogger(__name__)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device cuda was requested but no CUDA device is available")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        # bf16 on CUDA, and on CPUs that multiply bf16 natively: there, measured on the bundled model
        # (1 thread), a 550-token prefill ran 3.3x and a 16-sequence decode step 2.5x faster than in
        # fp32, one stream's decode step as fast. fp32 elsewhere; it stays available, exact with HF.
        native = device.type == "cuda" or has_native_bf16_matmul()
        return torch.bfloat16 if native else torch.float32
    return DTYPES[name]


def has_native_bf16_matmul() -> bool:
    """AVX512-BF16 or AMX on this CPU (oneDNN's bf16 matmuls run natively there)."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # absent on older torch: False
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


class ModelRunner:
    def __init__(self, config: EngineConfig, ckpt: Checkpoint) -> None:
        self.config = config
        self.model_config: ModelConfig = ckpt.config
        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(config.dtype, self.device)
        if self.device.type == "cpu":
            env_threads = int(os.environ.get("APPLIANCE_NUM_THREADS", "0") or 0)
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
            torch.set_num_threads(config.num_threads or env_threads or cores or 1)
        self.model = self._build_model(ckpt)
        if can_pack(self.device, self.dtype):
            pack_linears(self.model)
        elif can_use_small_batch_linears(self.device, self.dtype, config.attention_backend):
            use_small_batch_linears(self.model)
        self.backend = get_backend(self.device, config.attention_backend)
        self.block_size = config.block_size
        self.num_blocks = config.num_blocks or self._blocks_from_budget()
        self.kv_caches = self._allocate_kv(self.num_blocks)
        self.graphs = self._capture_graphs() if self._use_graphs() else None

    def _use_graphs(self) -> bool:
        return self.device.type == "cuda" and self.config.enable_cuda_graphs and self.backend.name == "triton"

    def _capture_graphs(self):
        from engine.cuda_graphs import DecodeGraphs

        max_len = self.config.max_model_len or self.model_config.max_position_embeddings
        max_blocks = min(self.num_blocks, -(-max_len // self.block_size))
        self.model.rotary.table(max_len)  # the graphs capture the RoPE table: it must not grow later
        with torch.inference_mode():
            return DecodeGraphs(self.model, self.backend, self.kv_caches, self.config.max_num_seqs,
                                max_blocks, self.device)

    def _build_model(self, ckpt: Checkpoint) -> LlamaForCausalLM:
        if ckpt.format == "random":
            return self._random_model(ckpt)
        with torch.device("meta"):
            model = LlamaForCausalLM(ckpt.config, ckpt.rope_freq_factors)
        if ckpt.quantization != "none":
            install_quantized(model, ckpt.weights, self.device, self.dtype)
            model.eval()
        else:
            model = model.to_empty(device="cpu")
            model.tie_weights()
            model.load_weights(ckpt.weights)
            model = model.to(device=self.device, dtype=self.dtype).eval()
        # RoPE frequencies stay fp32 whatever the weights' dtype (as in HF transformers).
        model.rotary.inv_freq = rope_inv_freq(ckpt.config, ckpt.rope_freq_factors).to(self.device)
        return model

    def _random_model(self, ckpt: Checkpoint) -> LlamaForCausalLM:
        """Build straight on the device in the target dtype (an 8B shape never touches host memory);
        quantized shapes get random codes layer by layer, never a float copy of a weight."""
        if ckpt.quantization != "none":
            model = random_quantized_model(ckpt.config, ckpt.quantization, self.device, self.dtype)
            model.rotary.inv_freq = rope_inv_freq(ckpt.config).to(self.device)
            return model.eval()
        default = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)
        try:
            with torch.device(self.device):
                model = LlamaForCausalLM(ckpt.config)
        finally:
            torch.set_default_dtype(default)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "norm" not in name:
                    param.normal_(0.0, 0.02)
        model.rotary.inv_freq = rope_inv_freq(ckpt.config).to(self.device)
        return model.eval()

    @property
    def kv_int8(self) -> bool:
        return self.config.kv_cache_dtype == "int8"

    @property
    def bytes_per_block(self) -> int:
        c = self.model_config
        per_head = c.head_dim + 4 if self.kv_int8 else c.head_dim * self.dtype.itemsize  # int8 + fp32 scale
        return 2 * c.num_layers * self.block_size * c.num_kv_heads * per_head

    def _blocks_from_budget(self) -> int:
        if self.device.type == "cuda":
            return self._profile_cuda_blocks()
        return max(1, int(self.config.kv_cache_gib * 2**30 // self.bytes_per_block))

    def _profile_cuda_blocks(self) -> int:
        """Run the largest step once with a tiny cache, then give the KV pool what is left."""
        self.kv_caches = self._allocate_kv(2)
        torch.cuda.reset_peak_memory_stats(self.device)
        n = self.config.max_num_batched_tokens
        meta = _dummy_prefill_meta(n, self.device)
        with torch.inference_mode():
            ids = torch.zeros(n, dtype=torch.long, device=self.device)
            self.model(ids, torch.arange(n, device=self.device) % 2, meta, self.kv_caches, self.backend)
        torch.cuda.synchronize(self.device)
        peak = torch.cuda.max_memory_allocated(self.device)
        total = torch.cuda.get_device_properties(self.device).total_memory
        del self.kv_caches
        torch.cuda.empty_cache()
        free_for_kv = total * self.config.gpu_memory_utilization - peak
        if free_for_kv < self.bytes_per_block:
            raise ValueError("not enough GPU memory for the KV cache; lower max_num_batched_tokens")
        return int(free_for_kv // self.bytes_per_block)

    def _allocate_kv(self, num_blocks: int) -> list[tuple[torch.Tensor, ...]]:
        c = self.model_config
        shape = (num_blocks, self.block_size, c.num_kv_heads, c.head_dim)
        dev = self.device
        if self.kv_int8:
            return [(torch.zeros(shape, dtype=torch.int8, device=dev),
                     torch.zeros(shape, dtype=torch.int8, device=dev),
                     torch.ones(shape[:3], dtype=torch.float32, device=dev),
                     torch.ones(shape[:3], dtype=torch.float32, device=dev)) for _ in range(c.num_layers)]
        return [(torch.zeros(shape, dtype=self.dtype, device=dev),
                 torch.zeros(shape, dtype=self.dtype, device=dev)) for _ in range(c.num_layers)]

    @torch.inference_mode()
    def execute(self, batch: ScheduledBatch) -> tuple[torch.Tensor, list[Sequence]]:
        """Run the step; returns logits [num_sampling_seqs, vocab] and those sequences, in order."""
        ids, positions, meta, sample_idx, sample_seqs = self.prepare(batch)
        self._move_chunks(batch)
        if self.graphs is not None and self.graphs.can_run(
                batch.num_decodes, len(batch.seqs), meta.decode_block_tables.shape[1]):
            hidden = self.graphs.run(ids, positions, meta)
        else:
            hidden = self.model(ids, positions, meta, self.kv_caches, self.backend)
        self._save_chunks(batch)
        if not sample_seqs:
            return torch.empty(0), []
        logits = self.model.compute_logits(hidden[sample_idx])
        return logits, sample_seqs

    @property
    def can_reuse_chunks(self) -> bool:
        """Stored chunk KV is re-rotated when moved: a float cache only (int8 keys would be requantized)."""
        return not self.kv_int8

    def _move_chunks(self, batch: ScheduledBatch) -> None:
        for seq in batch.seqs:
            ops = batch.chunk_ops.get(seq.request_id)
            if ops is not None and ops.moves:
                apply_moves(self.kv_caches, seq.block_table, ops.moves, self.block_size,
                            self.model.rotary.inv_freq)

    def _save_chunks(self, batch: ScheduledBatch) -> None:
        for seq in batch.seqs:
            ops = batch.chunk_ops.get(seq.request_id)
            if ops is not None and ops.saves:
                apply_saves(self.kv_caches, seq.block_table, ops.saves, self.block_size)

    def prepare(self, batch: ScheduledBatch):
        """Token ids, positions, metadata, the rows to sample and their sequences, for one step.

        A sequence whose step moves stored chunks in between computed tokens gives one attention row
        per run of computed tokens (chunk_kv.ChunkOps.segments), all over its block table: a later
        run attends to the earlier ones, whose K/V each layer stores before it attends. Positions
        and slots are computed with tensor ops over the whole step, not token by token.
        """
        seqs = batch.seqs
        rows = _rows(batch)
        row_seqs = [seqs[i] for i, _, _ in rows]
        counts = [n for _, _, n in rows]
        pairs = list(zip(row_seqs, rows, strict=True))
        ids = list(chain.from_iterable(s.token_ids[a:a + n] for s, (_, a, n) in pairs))
        ends = torch.tensor(counts, dtype=torch.long).cumsum(0)
        row_of_token = torch.repeat_interleave(torch.arange(len(rows)), torch.tensor(counts))
        first = torch.tensor([a for _, a, _ in rows], dtype=torch.long) - (ends - torch.tensor(counts))
        positions = torch.arange(len(ids)) + first[row_of_token]
        tables = _block_tables(row_seqs, torch.device("cpu"))
        bs = self.block_size
        slots = tables[row_of_token, positions // bs].long() * bs + positions % bs
        sampled = [k for k, (s, (_, a, n)) in enumerate(pairs) if a + n == s.num_tokens]
        self.model.rotary.table(max((a + n for _, a, n in rows), default=0))
        dev = self.device
        meta = self._metadata(batch.num_decodes, row_seqs, rows, tables, slots.to(dev))
        return (torch.tensor(ids, dtype=torch.long, device=dev), positions.to(dev), meta,
                (ends[sampled] - 1).to(dev), [row_seqs[k] for k in sampled])

    def _metadata(self, nd: int, row_seqs: list[Sequence], rows: list[tuple[int, int, int]],
                  tables: torch.Tensor, slots: torch.Tensor) -> AttentionMetadata:
        """`rows`: (sequence index, first position, tokens); the first nd rows are decodes."""
        lens = torch.tensor([a + n for _, a, n in rows], dtype=torch.int32)
        starts = torch.zeros(len(rows) - nd + 1, dtype=torch.int32)
        starts[1:] = torch.tensor([n for _, _, n in rows[nd:]], dtype=torch.int32).cumsum(0)
        dev = self.device
        meta = AttentionMetadata(
            slot_mapping=slots, num_decode_tokens=nd,
            decode_block_tables=_trimmed(tables[:nd], row_seqs[:nd]).to(dev),
            decode_seq_lens=lens[:nd].to(dev),
            prefill_block_tables=_trimmed(tables[nd:], row_seqs[nd:]).to(dev),
            prefill_query_start_loc=starts.to(dev), prefill_seq_lens=lens[nd:].to(dev))
        if self.backend.name == "torch" and not self.kv_int8:
            c = self.model_config
            meta.plan(self.block_size, c.num_heads // c.num_kv_heads, self.dtype, self.backend.plans_decode)
        return meta


def _rows(batch: ScheduledBatch) -> list[tuple[int, int, int]]:
    """The step's attention rows: (sequence index, first position, tokens), decodes first."""
    rows = []
    for i, (seq, n) in enumerate(zip(batch.seqs, batch.num_new_tokens, strict=True)):
        ops = batch.chunk_ops.get(seq.request_id)
        segments = ops.segments(seq.num_computed_tokens, n) if ops else [(seq.num_computed_tokens, n)]
        rows += [(i, a, k) for a, k in segments]
    return rows


def _block_tables(seqs: list[Sequence], device: torch.device) -> torch.Tensor:
    width = max((len(s.block_table) for s in seqs), default=0)
    rows = [s.block_table + [0] * (width - len(s.block_table)) for s in seqs]
    return torch.tensor(rows, dtype=torch.int32, device=device).reshape(len(seqs), width)


def _trimmed(tables: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
    """Rows of the step's block tables cut to the widest of these sequences' tables."""
    return tables[:, :max((len(s.block_table) for s in seqs), default=0)]


def _dummy_prefill_meta(n: int, device: torch.device) -> AttentionMetadata:
    """Two-token sequences over blocks 0 and 1 of a two-block cache, as many as fit in n tokens."""
    num = n // 2
    empty = torch.zeros(0, 1, dtype=torch.int32, device=device)
    return AttentionMetadata(
        slot_mapping=torch.full((n,), -1, dtype=torch.long, device=device), num_decode_tokens=0,
        decode_block_tables=empty, decode_seq_lens=torch.zeros(0, dtype=torch.int32, device=device),
        prefill_block_tables=torch.zeros(num, 1, dtype=torch.int32, device=device),
        prefill_query_start_loc=torch.arange(0, 2 * num + 1, 2, dtype=torch.int32, device=device),
        prefill_seq_lens=torch.full((num,), 2, dtype=torch.int32, device=device),
    )
