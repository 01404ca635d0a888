"""What `appliance bench peers` measured, the arithmetic that turns times into rates, and the ratios.

One-stream rates come from two request lengths on equally long cold prompts, so the same maths
serves an HTTP server and an offline `LLM.generate` that reports no token timestamps: a request
for 1 token is the prefill (plus one sample), a request for N tokens costs N - 1 more decode steps.
Medians over rounds, so one slow round on a shared machine does not decide the row.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field


@dataclass(slots=True)
class Measured:
    """One system's times on the shared inputs."""

    system: str
    workload_s: float
    num_prompt_tokens: int
    num_output_tokens: int
    first_token_s: list[float] = field(default_factory=list)  # cold prompt, max_tokens=1, per round
    full_s: list[float] = field(default_factory=list)  # cold prompt, max_tokens=decode_tokens, per round
    note: str = ""


@dataclass(slots=True)
class OneStream:
    prefill_s: float
    prefill_tok_s: float
    decode_tok_s: float | None  # None when the longer request was not slower (noise swamped it)


def one_stream(prompt_tokens: int, first_token_s: list[float], full_s: list[float],
               decode_tokens: int) -> OneStream:
    prefill = statistics.median(first_token_s)
    extra = statistics.median(full_s) - prefill
    decode = (decode_tokens - 1) / extra if extra > 0 else None
    return OneStream(prefill, prompt_tokens / prefill, decode)


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b; None when either is missing or zero. How much faster ours is: our rate / the peer's
    rate, or the peer's seconds / ours."""
    return a / b if a and b else None


def print_workload(rows: list[Measured], num_requests: int, output_len: int) -> None:
    ours = rows[0] if rows and rows[0].system.startswith("ours") else None
    print(f"\nRAG workload: {num_requests} requests, {output_len} output tokens each "
          "(times exclude load and one warm-up request)")
    width = max(len(row.system) for row in rows) if rows else 6
    print(f"{'system':{width}} {'seconds':>8} {'out tok/s':>9} {'total tok/s':>11} {'ours faster':>11}")
    for row in rows:
        speedup = ratio(row.workload_s, ours.workload_s) if ours else None
        print(f"{row.system:{width}} {row.workload_s:8.2f} {row.num_output_tokens / row.workload_s:9.1f} "
              f"{(row.num_prompt_tokens + row.num_output_tokens) / row.workload_s:11.1f} "
              f"{_times(speedup):>11}")
        if row.note:
            print(f"  {row.note}")


def print_one_stream(rows: list[Measured], prompt_tokens: int, decode_tokens: int) -> None:
    streams = [(row.system, one_stream(prompt_tokens, row.first_token_s, row.full_s, decode_tokens))
               for row in rows if row.first_token_s and row.full_s]
    if not streams:
        return
    print(f"\none stream: a cold {prompt_tokens}-token RAG prompt; 1 and {decode_tokens} output tokens, "
          f"median of {len(rows[0].first_token_s)}")
    width = max(len(name) for name, _ in streams)
    print(f"{'system':{width}} {'prefill s':>9} {'prefill tok/s':>13} {'decode tok/s':>12} "
          f"{'ours: prefill, decode':>22}")
    ours = streams[0][1] if streams[0][0].startswith("ours") else None
    for name, s in streams:
        prefill_x = ratio(ours.prefill_tok_s, s.prefill_tok_s) if ours else None
        decode_x = ratio(ours.decode_tok_s, s.decode_tok_s) if ours else None
        decode = f"{s.decode_tok_s:12.1f}" if s.decode_tok_s else f"{'-':>12}"
        print(f"{name:{width}} {s.prefill_s:9.3f} {s.prefill_tok_s:13.1f} {decode} "
              f"{_times(prefill_x) + ', ' + _times(decode_x):>22}")


def _times(x: float | None) -> str:
    return f"{x:.2f}x" if x is not None else "-"
