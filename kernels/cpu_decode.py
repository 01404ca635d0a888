"""Paged decode attention for CPUs as a small C++ kernel, compiled on first use.

Decode attention is memory-bound: each sequence's one query reads its whole K/V context once. In
plain torch (kernels.cpu_attention) that context is first gathered into a padded copy, and SDPA then
reads the copy again (and copies it once more to make it contiguous), so on a 2-core AVX2 box a
48-sequence RAG decode step spent 37 ms per layer there, 45% of the workload. This kernel reads
K and V straight from the paged cache, once, one (sequence, KV head) per task: the grouped query
heads share each key row while it is in cache, scores are kept for a whole context (two-pass
softmax, no per-key rescaling), and every sum is in fp32 whatever the cache dtype.

Built with the other CPU kernels (kernels.cpu_native); where no compiler is available the caller
keeps the torch path (`cpu_native.available()` says which).
"""

from __future__ import annotations

import torch

from kernels import cpu_native

SOURCE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

template <typename scalar_t>
static inline float dot(const float* a, const scalar_t* b, int64_t n) {
  float lanes[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};  // 8 partial sums: vectorisable, no fast-math
  int64_t d = 0;
  for (; d + 8 <= n; d += 8)
    for (int j = 0; j < 8; ++j) lanes[j] += a[d + j] * static_cast<float>(b[d + j]);
  float tail = 0.f;
  for (; d < n; ++d) tail += a[d] * static_cast<float>(b[d]);
  const float low = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
  return low + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7])) + tail;
}

// One sequence, the KV heads [head_begin, head_end): each key row is read once for every query
// head that uses it; scores for the whole context, then one pass over the values.
template <typename scalar_t>
static void decode_task(const scalar_t* q, const scalar_t* k_cache, const scalar_t* v_cache,
                        const int32_t* table, int64_t len, int64_t block_size, int64_t kv_heads,
                        int64_t head_begin, int64_t head_end, int64_t group, int64_t dim, float scale,
                        scalar_t* out, std::vector<float>& qf, std::vector<float>& scores,
                        std::vector<float>& acc) {
  const int64_t row_stride = kv_heads * dim, heads = (head_end - head_begin) * group;
  const scalar_t* qh = q + head_begin * group * dim;
  for (int64_t i = 0; i < heads * dim; ++i) qf[i] = static_cast<float>(qh[i]) * scale;
  scores.resize(heads * len);
  for (int64_t pos = 0; pos < len; ++pos) {
    const int64_t slot = static_cast<int64_t>(table[pos / block_size]) * block_size + pos % block_size;
    const scalar_t* row = k_cache + slot * row_stride;
    for (int64_t h = 0; h < heads; ++h)
      scores[h * len + pos] = dot(qf.data() + h * dim, row + (head_begin + h / group) * dim, dim);
  }
  for (int64_t h = 0; h < heads; ++h) {
    float* s = scores.data() + h * len;
    const float top = *std::max_element(s, s + len);
    float total = 0.f;
    for (int64_t pos = 0; pos < len; ++pos) { s[pos] = std::exp(s[pos] - top); total += s[pos]; }
    const float inv = 1.f / total;
    for (int64_t pos = 0; pos < len; ++pos) s[pos] *= inv;
  }
  std::fill(acc.begin(), acc.begin() + heads * dim, 0.f);
  for (int64_t pos = 0; pos < len; ++pos) {
    const int64_t slot = static_cast<int64_t>(table[pos / block_size]) * block_size + pos % block_size;
    const scalar_t* row = v_cache + slot * row_stride;
    for (int64_t h = 0; h < heads; ++h) {
      const float p = scores[h * len + pos];
      const scalar_t* value = row + (head_begin + h / group) * dim;
      float* a = acc.data() + h * dim;
      for (int64_t d = 0; d < dim; ++d) a[d] += p * static_cast<float>(value[d]);
    }
  }
  scalar_t* oh = out + head_begin * group * dim;
  for (int64_t i = 0; i < heads * dim; ++i) oh[i] = static_cast<scalar_t>(acc[i]);
}

torch::Tensor paged_decode(torch::Tensor q, torch::Tensor k_cache, torch::Tensor v_cache,
                           torch::Tensor block_tables, torch::Tensor seq_lens, double scale) {
  TORCH_CHECK(q.is_contiguous() && k_cache.is_contiguous() && v_cache.is_contiguous(), "contiguous inputs");
  TORCH_CHECK(block_tables.scalar_type() == at::kInt && seq_lens.scalar_type() == at::kInt, "int32 tables");
  auto tables = block_tables.contiguous();
  auto lens = seq_lens.contiguous();
  const int64_t num_seqs = q.size(0), heads = q.size(1), dim = q.size(2);
  const int64_t block_size = k_cache.size(1), kv_heads = k_cache.size(2);
  const int64_t group = heads / kv_heads, width = tables.size(1);
  auto out = torch::empty_like(q);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "paged_decode", [&] {
    const scalar_t* qp = q.data_ptr<scalar_t>();
    const scalar_t* kp = k_cache.data_ptr<scalar_t>();
    const scalar_t* vp = v_cache.data_ptr<scalar_t>();
    const int32_t* tp = tables.data_ptr<int32_t>();
    const int32_t* lp = lens.data_ptr<int32_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    // A task per sequence (all its KV heads: whole cache rows), or per KV head of a sequence when
    // there are fewer sequences than threads.
    const int64_t split = num_seqs >= at::get_num_threads() ? 1 : kv_heads;
    const int64_t per_task = kv_heads / split;
    at::parallel_for(0, num_seqs * split, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> qf(heads * dim), scores, acc(heads * dim);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t seq = task / split, first = (task % split) * per_task;
        decode_task<scalar_t>(qp + seq * heads * dim, kp, vp, tp + seq * width, lp[seq], block_size,
                              kv_heads, first, first + per_task, group, dim, static_cast<float>(scale),
                              op + seq * heads * dim, qf, scores, acc);
      }
    });
  });
  return out;
}
"""


def paged_decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           block_tables: torch.Tensor, seq_lens: torch.Tensor, scale: float) -> torch.Tensor:
    """`kernels.reference.paged_decode_attention` (same arguments and layouts), in C++."""
    assert q.dtype == k_cache.dtype == v_cache.dtype, "queries and cache share a float dtype"
    return cpu_native.module().paged_decode(q.contiguous(), k_cache, v_cache, block_tables.to(torch.int32),
                                            seq_lens.to(torch.int32), float(scale))
