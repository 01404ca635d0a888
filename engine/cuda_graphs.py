"""CUDA graphs for decode-only steps: one graph per batch-size bucket, replayed with padded inputs.

A decode step launches a few hundred small kernels; replaying a captured graph removes that launch
overhead. Inputs are copied into static buffers, padded up to the bucket: padded rows store nothing
(slot -1) and attend to one token of block 0, and their outputs are dropped. The same padding path
runs eagerly (capture=False), which is how it is tested without a GPU.
"""

from __future__ import annotations

import torch

from engine.attention import AttentionBackend, AttentionMetadata

BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)


class DecodeGraphs:
    def __init__(self, model: torch.nn.Module, backend: AttentionBackend,
                 kv_caches: list[tuple[torch.Tensor, torch.Tensor]], max_batch: int, max_blocks: int,
                 device: torch.device, capture: bool = True) -> None:
        self.model, self.backend, self.kv_caches = model, backend, kv_caches
        self.sizes = [b for b in BUCKETS if b <= max_batch] or [1]
        self.max_blocks = max_blocks
        n = self.sizes[-1]
        self.ids = torch.zeros(n, dtype=torch.long, device=device)
        self.positions = torch.zeros(n, dtype=torch.long, device=device)
        self.slots = torch.full((n,), -1, dtype=torch.long, device=device)
        self.tables = torch.zeros(n, max_blocks, dtype=torch.int32, device=device)
        self.seq_lens = torch.ones(n, dtype=torch.int32, device=device)
        self._empty_tables = torch.zeros(0, 1, dtype=torch.int32, device=device)
        self._empty_lens = torch.zeros(0, dtype=torch.int32, device=device)
        self._start = torch.zeros(1, dtype=torch.int32, device=device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        if capture:
            self._capture_all()

    def bucket(self, num_seqs: int) -> int | None:
        return next((b for b in self.sizes if b >= num_seqs), None)

    def can_run(self, num_decodes: int, num_seqs: int, table_width: int) -> bool:
        fits = self.bucket(num_seqs) is not None and table_width <= self.max_blocks
        return num_decodes == num_seqs and fits

    def run(self, ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        n = ids.shape[0]
        b = self.bucket(n)
        assert b is not None
        width = meta.decode_block_tables.shape[1]
        self.ids[:n].copy_(ids)
        self.ids[n:b].zero_()
        self.positions[:n].copy_(positions)
        self.positions[n:b].zero_()
        self.slots[:n].copy_(meta.slot_mapping)
        self.slots[n:b].fill_(-1)
        self.tables[:b].zero_()
        self.tables[:n, :width].copy_(meta.decode_block_tables)
        self.seq_lens[:n].copy_(meta.decode_seq_lens)
        self.seq_lens[n:b].fill_(1)
        if b in self.graphs:
            self.graphs[b].replay()
            return self.outputs[b][:n]
        return self._forward(b)[:n]

    def _meta(self, b: int) -> AttentionMetadata:
        return AttentionMetadata(
            slot_mapping=self.slots[:b], num_decode_tokens=b, decode_block_tables=self.tables[:b],
            decode_seq_lens=self.seq_lens[:b], prefill_block_tables=self._empty_tables,
            prefill_query_start_loc=self._start, prefill_seq_lens=self._empty_lens)

    def _forward(self, b: int) -> torch.Tensor:
        return self.model(self.ids[:b], self.positions[:b], self._meta(b), self.kv_caches, self.backend)

    def _capture_all(self) -> None:
        """Largest bucket first, so the smaller graphs reuse its memory pool."""
        pool = None
        for b in reversed(self.sizes):
            self._forward(b)  # compiles the kernels for this shape outside the capture
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.outputs[b] = self._forward(b)
            pool = graph.pool()
            self.graphs[b] = graph
