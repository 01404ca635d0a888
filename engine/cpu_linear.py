"""fp32 linear layers that multiply decode-sized inputs with the C++ kernel of kernels.cpu_gemv.

A decode step is a handful of activation rows against every weight, bound by reading the weights,
and MKL reads them at half to a third of the memory bandwidth there (kernels/cpu_gemv.py). These
layers send inputs of up to MAX_ROWS rows to the kernel and larger ones (prefill) to F.linear. They
hold the very Parameter of the layer they replace: no copy, and a tied output head stays tied.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from kernels import cpu_gemv, cpu_native


def can_use_small_batch_linears(device: torch.device, dtype: torch.dtype, backend: str) -> bool:
    """fp32 on a CPU where the kernel builds; `backend` 'torch' keeps every CPU op in plain torch."""
    return device.type == "cpu" and dtype == torch.float32 and backend == "auto" and cpu_native.available()


class SmallBatchLinear(nn.Module):
    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features)
        if x2.shape[0] > cpu_gemv.MAX_ROWS or x2.shape[0] == 0:
            y = F.linear(x2, self.weight, self.bias)
        else:
            y = cpu_gemv.small_linear(x2, self.weight)
            if self.bias is not None:
                y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)


def replace_linears(model: nn.Module, dtype: torch.dtype, make: Callable[[nn.Linear], nn.Module]) -> int:
    """Replace every `nn.Linear` of `model` whose weight is `dtype` by `make(layer)`; returns how many."""
    targets = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
               if type(child) is nn.Linear and child.weight.dtype == dtype]
    with torch.no_grad():
        for parent, name, child in targets:
            setattr(parent, name, make(child))
    return len(targets)


def use_small_batch_linears(model: nn.Module) -> int:
    """Replace every fp32 `nn.Linear` of `model` by a `SmallBatchLinear`; returns how many."""
    return replace_linears(model, torch.float32, SmallBatchLinear)
