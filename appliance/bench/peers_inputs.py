"""The inputs every system of `appliance bench peers` gets: chat messages and their token ids.

The workload is `bench engine`'s RAG workload. Token ids come from our tokenizer (the bundled
GGUF's, through transformers), so the peers see exactly the tokens our server builds from the same
messages. One-stream prompts are RAG prompts cut to a target length and opened with a distinct
session number, so each is cold on every system (no prefix cache can serve it) and all are equally
long; the warm-up prompt is one more of them, so it warms nothing the workload could reuse.
"""

from __future__ import annotations

from dataclasses import dataclass

from appliance.bench.workload import QUESTIONS, SYSTEM_PROMPT, load_chunk_pool, rag_requests

FIRST_SESSION = 1000  # four digits, so every session label is equally long in tokens


@dataclass(slots=True)
class Prompt:
    messages: list[dict]
    ids: list[int]


@dataclass(slots=True)
class Inputs:
    workload: list[Prompt]
    output_len: int
    warmup: Prompt
    one_stream: list[tuple[Prompt, int]]  # per round: (cold prompt, 1), (cold prompt, decode_tokens)
    decode_tokens: int

    @property
    def num_prompt_tokens(self) -> int:
        return sum(len(p.ids) for p in self.workload)

    @property
    def one_stream_tokens(self) -> int:
        return len(self.one_stream[0][0].ids)

    @property
    def max_context(self) -> int:
        """Tokens one request may need: the longest prompt and the most output, rounded up."""
        longest = max(len(p.ids) for p in [*self.workload, *(p for p, _ in self.one_stream)])
        return -(-(longest + max(self.output_len, self.decode_tokens) + 1) // 256) * 256


def build_inputs(tokenizer, num_requests: int, output_len: int, prompt_tokens: int, decode_tokens: int,
                 rounds: int) -> Inputs:
    """`tokenizer`: an engine Tokenizer of the bundled model (`load_tokenizer()`)."""
    workload = [Prompt(r.messages, tokenizer.apply_chat_template(r.messages))
                for r in rag_requests(num_requests)]
    context = _context_of_length(tokenizer, prompt_tokens)
    prompts = [_cold_prompt(tokenizer, FIRST_SESSION + k, context) for k in range(2 * rounds + 1)]
    one_stream = [(prompts[1 + k], 1 if k % 2 == 0 else decode_tokens) for k in range(2 * rounds)]
    return Inputs(workload, output_len, prompts[0], one_stream, decode_tokens)


def load_tokenizer():
    from engine.loader import load_checkpoint
    from engine.tokenizer import Tokenizer

    return Tokenizer.from_checkpoint(load_checkpoint(None))


def _cold_prompt(tokenizer, session: int, context: str) -> Prompt:
    messages = [{"role": "system", "content": f"Session {session}. {SYSTEM_PROMPT}"},
                {"role": "user", "content": f"{context}\n\nQuestion: {QUESTIONS[0]}"}]
    return Prompt(messages, tokenizer.apply_chat_template(messages))


def _context_of_length(tokenizer, target: int) -> str:
    """Numbered chunks, the last one cut by words, so the whole prompt is as close to `target`
    tokens as possible without going over (or the system prompt alone, when that is longer)."""
    words = "\n\n".join(f"[{k + 1}] {chunk}" for k, chunk in enumerate(load_chunk_pool(24))).split(" ")
    lo, hi = 0, len(words)  # the longest prefix of `words` that fits: binary search
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(_cold_prompt(tokenizer, FIRST_SESSION, " ".join(words[:mid])).ids) <= target:
            lo = mid
        else:
            hi = mid - 1
    return " ".join(words[:lo])
