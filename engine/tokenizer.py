"""Tokenizer and chat template from the same source as the weights (transformers, not hand-written BPE).

Converting a GGUF vocabulary into a fast tokenizer takes seconds, so the converted tokenizer is cached
on disk, keyed by the file's path, size and mtime.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from engine.loader import Checkpoint, CheckpointError


def cache_dir() -> Path:
    base = os.environ.get("APPLIANCE_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "appliance")
    return Path(base)


class Tokenizer:
    def __init__(self, hf_tokenizer, eos_token_ids: list[int]) -> None:
        self.hf = hf_tokenizer
        ids = set(eos_token_ids)
        if hf_tokenizer.eos_token_id is not None:
            ids.add(int(hf_tokenizer.eos_token_id))
        self.eos_token_ids: frozenset[int] = frozenset(ids)
        self.vocab_size = len(hf_tokenizer)

    @classmethod
    def from_checkpoint(cls, ckpt: Checkpoint) -> Tokenizer:
        from transformers import AutoTokenizer

        if ckpt.format == "hf":
            hf = AutoTokenizer.from_pretrained(str(ckpt.path))
        elif ckpt.format == "random":  # random weights: any tokenizer will do; use the bundled one
            from engine.loader import bundled_model_path

            hf = _gguf_tokenizer(bundled_model_path())
        else:
            hf = _gguf_tokenizer(ckpt.path)
        return cls(hf, ckpt.config.eos_token_ids)

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.hf, "chat_template", None))

    def encode(self, text: str) -> list[int]:
        return list(self.hf.encode(text, add_special_tokens=True))

    def apply_chat_template(self, messages: list[dict]) -> list[int]:
        """Token ids of a chat prompt, ending with the assistant turn's opening."""
        if not self.has_chat_template:
            raise ValueError("this model has no chat template; use a plain completion prompt")
        text = self.hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return list(self.hf.encode(text, add_special_tokens=False))

    def apply_chat_template_with_spans(self, messages: list[dict], pieces: list[str]
                                       ) -> tuple[list[int], list[tuple[int, int]]]:
        """`apply_chat_template`'s ids, plus for each piece of text (in the order they appear in the
        rendered prompt) the span of tokens lying wholly inside it; pieces not found, or too short
        to hold a whole token, get no span. Used to name a RAG prompt's retrieved chunks."""
        if not self.has_chat_template:
            raise ValueError("this model has no chat template; use a plain completion prompt")
        text = self.hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        enc = self.hf(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
        spans, cursor, token = [], 0, 0
        for piece in pieces:
            begin = text.find(piece, cursor)
            if begin < 0 or not piece:
                continue
            end = cursor = begin + len(piece)
            while token < len(offsets) and offsets[token][0] < begin:
                token += 1
            first = token
            while token < len(offsets) and offsets[token][1] <= end:
                token += 1
            if token > first:
                spans.append((first, token))
        return ids, spans

    def encode_chat_prefix(self, messages: list[dict]) -> list[int]:
        """Token ids of messages rendered as the start of a chat (no assistant turn opened)."""
        text = self.hf.apply_chat_template(messages, add_generation_prompt=False, tokenize=False)
        return list(self.hf.encode(text, add_special_tokens=False))

    def system_prefix_len(self, messages: list[dict], prompt_ids: list[int]) -> int:
        """How many leading tokens of prompt_ids are the leading system message(s) of messages.

        Used to mark a shared system prompt public in the prefix cache: only those tokens, and only
        where the rendered prefix really is a token prefix of the prompt.
        """
        systems = []
        for m in messages:
            if m.get("role") != "system":
                break
            systems.append(m)
        if not systems or not self.has_chat_template:
            return 0
        prefix = self.encode_chat_prefix(systems)
        n = 0
        while n < min(len(prefix), len(prompt_ids)) and prefix[n] == prompt_ids[n]:
            n += 1
        return n

    def decode(self, ids: list[int]) -> str:
        return self.hf.decode(ids, skip_special_tokens=True)


def _gguf_tokenizer(path: Path):
    from transformers import AutoTokenizer

    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    cached = cache_dir() / "tokenizers" / key
    if (cached / "tokenizer_config.json").exists():
        try:
            return AutoTokenizer.from_pretrained(str(cached))
        except Exception:  # a damaged cache entry is rebuilt below
            pass
    try:
        hf = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except Exception as exc:
        raise CheckpointError(f"cannot build a tokenizer from {path}: {exc}") from exc
    try:
        tmp = cached.with_name(key + f".tmp{os.getpid()}")
        hf.save_pretrained(str(tmp))
        os.replace(tmp, cached) if not cached.exists() else None
    except OSError:
        pass  # the cache is an optimisation only
    return hf
