"""Incremental detokenization: valid UTF-8 text deltas, correct spacing, exact stop strings.

Each new token is decoded together with a few tokens before it, so byte-level BPE pieces that begin
with a space (or finish a multi-byte character) come out right; text that ends in a partial character
is held back until the next token completes it. While stop strings are set, the last len(stop) - 1
characters are also held back, because they might be the start of a stop string.
"""

from __future__ import annotations

from engine.tokenizer import Tokenizer

CONTEXT_TOKENS = 5  # prompt tokens decoded before the first output token, for its leading space


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Tokenizer, prompt_ids: list[int], stop: list[str],
                 include_stop: bool = False) -> None:
        self.tokenizer = tokenizer
        self.ids = list(prompt_ids[-CONTEXT_TOKENS:])
        self.prefix_offset = 0
        self.read_offset = len(self.ids)
        self.text = ""  # all output text decoded so far (after any stop-string cut)
        self.num_emitted = 0  # characters of self.text already handed out
        self.stop = stop
        self.include_stop = include_stop
        self.holdback = max((len(s) for s in stop), default=1) - 1

    def add_token(self, token_id: int) -> None:
        self.ids.append(token_id)
        prefix = self.tokenizer.decode(self.ids[self.prefix_offset:self.read_offset])
        full = self.tokenizer.decode(self.ids[self.prefix_offset:])
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            self.text += full[len(prefix):]
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)

    def flush(self) -> None:
        """At the end, release whatever is pending, even an incomplete character."""
        prefix = self.tokenizer.decode(self.ids[self.prefix_offset:self.read_offset])
        full = self.tokenizer.decode(self.ids[self.prefix_offset:])
        if len(full) > len(prefix):
            self.text += full[len(prefix):]
        self.prefix_offset = self.read_offset = len(self.ids)

    def find_stop(self) -> bool:
        """Cut the text at the first stop string; True when one was found."""
        if not self.stop:
            return False
        start = max(0, self.num_emitted - self.holdback)
        best = -1
        best_stop = ""
        for s in self.stop:
            i = self.text.find(s, start)
            if i != -1 and (best == -1 or i < best):
                best, best_stop = i, s
        if best == -1:
            return False
        self.text = self.text[: best + (len(best_stop) if self.include_stop else 0)]
        return True

    def take_delta(self, finished: bool) -> str:
        limit = len(self.text) if finished else max(self.num_emitted, len(self.text) - self.holdback)
        delta = self.text[self.num_emitted:limit]
        self.num_emitted = limit
        return delta
