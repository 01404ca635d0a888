"""Weight-only quantization kept quantized at run time.

A 4-bit checkpoint dequantized to fp32 streams ~7x more bytes per decode step than it needs to, and an
8B model's fp32 weights do not fit this box at all. So quantized weights stay quantized: GGUF blocks
decode straight into our layouts (layouts.py, gguf_blocks.py), float checkpoints quantize on load
(quantize.py), and the model's linear layers and embedding are swapped for modules that run torch's
weight-only int4/int8 matmuls (linear.py, embedding.py, apply.py).
"""

from engine.quant.layouts import QUANTIZATION_MODES, Int4Weight, Int8Weight, QuantWeight

__all__ = ["QUANTIZATION_MODES", "Int4Weight", "Int8Weight", "QuantWeight"]
