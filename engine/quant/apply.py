"""Swap a meta-built model's linear layers and embedding for quantized ones, then load the rest.

The model is built on the meta device, so no float copy of a quantized weight is ever allocated;
each quantized module is created from its layout on the target device, and only what stays float
(norms, biases, RoPE) is materialized afterwards.
"""

from __future__ import annotations

import torch
from torch import nn

from engine.model import FUSED_PROJECTIONS, LlamaForCausalLM
from engine.quant.embedding_head import quantized_embedding_and_head
from engine.quant.layouts import Int4Weight, Int8Weight, QuantWeight
from engine.quant.linear import Int4Linear, Int8Linear

HEAD_NAMES = ("model.embed_tokens.weight", "lm_head.weight")


def fuse_rows(weights: dict) -> dict:
    """Checkpoint names to the model's fused ones, stacking the parts' rows (quantized or float)."""
    out = dict(weights)
    for name in weights:
        for fused, parts in FUSED_PROJECTIONS.items():
            prefix, sep, suffix = name.partition(f".{parts[0]}.")
            names = [f"{prefix}.{part}.{suffix}" for part in parts]
            if sep and all(n in weights for n in names):
                values = [out.pop(n) for n in names]
                first = values[0]
                cat = type(first).cat_rows if isinstance(first, Int4Weight | Int8Weight) else torch.cat
                out[f"{prefix}.{fused}.{suffix}"] = cat(values)
    return out


def quant_module(weight: QuantWeight, bias: torch.Tensor | None, device: torch.device) -> nn.Module:
    if isinstance(weight, Int4Weight):
        return Int4Linear(weight, bias, device)
    return Int8Linear(weight, bias, device)


def install_quantized(model: LlamaForCausalLM, weights: dict, device: torch.device,
                      dtype: torch.dtype) -> None:
    """Replace every linear layer whose weight is a layout; load the float tensors that remain."""
    weights = fuse_rows(weights)
    quantized_embedding_and_head(model, weights.pop(HEAD_NAMES[0]), weights.pop(HEAD_NAMES[1], None),
                                 device, dtype)
    for name in [n for n, w in weights.items() if isinstance(w, Int4Weight | Int8Weight)]:
        path = name.removesuffix(".weight")
        bias = weights.pop(f"{path}.bias", None)
        parent, _, attr = path.rpartition(".")
        setattr(model.get_submodule(parent), attr, quant_module(weights.pop(name), bias, device))
    materialize(model, device, dtype)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in weights.items():
            if name not in params:
                raise ValueError(f"unexpected tensor {name} in checkpoint")
            params[name].copy_(tensor)


def materialize(model: nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """Give every parameter and buffer still on the meta device real (uninitialised) storage,
    as `to_empty` would, without touching the quantized modules' buffers."""
    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if param is not None and param.is_meta:
                empty = torch.empty(param.shape, dtype=dtype, device=device)
                module._parameters[name] = nn.Parameter(empty, requires_grad=False)
        for name, buf in list(module._buffers.items()):
            if buf is not None and buf.is_meta:
                module._buffers[name] = torch.empty(buf.shape, dtype=buf.dtype, device=device)


def weight_bytes(model: nn.Module) -> int:
    """Resident bytes of the model's parameters and buffers, each storage counted once (an opaque
    oneDNN-packed weight by its element count: its storage cannot be read)."""
    seen: dict[int, int] = {}
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_mkldnn:
            seen[id(t)] = t.numel() * t.element_size()
        else:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())
