"""Small-batch fp32 linear layers for CPUs as a C++ kernel: decode's matrix-vector products.

A decode step multiplies a few rows of activations (one per sequence) by every weight of the model,
so it is bound by reading the weights. MKL's fp32 product reads them at about half this AVX2 EPYC's
memory bandwidth for one row (13 GB/s against 25 GB/s for a plain sum over the same bytes) and at a
third for 2 to 8 rows. This kernel reads each weight row once for all the activation rows (up to
MAX_ROWS), with fp32 partial sums; the SmolLM2-135M projections of 30 layers at 1/2/4/8 rows took
17.8/22.1/25.0/40.4 ms against MKL's 35.6/57.5/60.4/51.7 ms (at 12 rows both take 57 ms). Its sums
are in another order than MKL's, so results differ in the last bits (tests/kernels/
test_kernel_cpu_gemv.py bounds them; the HF token-exactness tests run with it), but each row's
order is fixed: a sequence gets the same numbers whichever rows share its step. Built with the
other CPU kernels (kernels.cpu_native).
"""

from __future__ import annotations

import torch

from kernels import cpu_native

MAX_ROWS = 8  # from about 12 rows on, MKL's blocked product is as fast or faster

SOURCE = r"""
#include <algorithm>

// out[m, n] = sum_k x[m, k] * w[n, k] for G rows of x and one weight row, in 16 fp32 partial sums
// per x row (vectorisable without fast-math), added up in a fixed order: a row's result does not
// depend on G, nor on which other rows share the step.
template <int G>
static inline void group_dot(const float* x, const float* row, float* out, int64_t K, int64_t N) {
  float acc[G][16] = {};
  int64_t k = 0;
  for (; k + 16 <= K; k += 16)
    for (int m = 0; m < G; ++m)
      for (int j = 0; j < 16; ++j) acc[m][j] += x[m * K + k + j] * row[k + j];
  for (int m = 0; m < G; ++m) {
    float total = 0.f;
    for (int j = 0; j < 16; ++j) total += acc[m][j];
    for (int64_t t = k; t < K; ++t) total += x[m * K + t] * row[t];
    out[m * N] = total;
  }
}

// The weight rows [n_begin, n_end) against every row of x, in groups of up to 4 x rows (their
// partial sums fill the vector registers); a weight row is read from memory once, then from L1.
static void rows_times_weight(const float* x, const float* w, float* out, int64_t M, int64_t K,
                              int64_t N, int64_t n_begin, int64_t n_end) {
  for (int64_t n = n_begin; n < n_end; ++n) {
    const float* row = w + n * K;
    for (int64_t m0 = 0; m0 < M; m0 += 4) {
      const float* xg = x + m0 * K;
      float* og = out + m0 * N + n;
      switch (std::min<int64_t>(4, M - m0)) {
        case 1: group_dot<1>(xg, row, og, K, N); break;
        case 2: group_dot<2>(xg, row, og, K, N); break;
        case 3: group_dot<3>(xg, row, og, K, N); break;
        default: group_dot<4>(xg, row, og, K, N); break;
      }
    }
  }
}

torch::Tensor small_linear(torch::Tensor x, torch::Tensor w) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && w.scalar_type() == at::kFloat, "fp32 only");
  TORCH_CHECK(x.is_contiguous() && w.is_contiguous() && x.dim() == 2 && w.dim() == 2, "contiguous 2-d");
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  TORCH_CHECK(w.size(1) == K && M >= 1, "rows of the weight's width");
  auto out = torch::empty({M, N}, x.options());
  const float* xp = x.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, N, 64, [&](int64_t begin, int64_t end) {
    rows_times_weight(xp, wp, op, M, K, N, begin, end);
  });
  return out;
}
"""


def small_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """`F.linear(x, weight)` for fp32 x of 1 to MAX_ROWS rows [rows, K] and weight [N, K]."""
    return cpu_native.module().small_linear(x.contiguous(), weight.contiguous())
