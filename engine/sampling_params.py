"""Per-request sampling settings, validated once at the door."""

from __future__ import annotations

from dataclasses import dataclass, field


class InvalidRequestError(ValueError):
    """A request the engine refuses; the message is meant for the user as is."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.code = code


@dataclass(slots=True)
class SamplingParams:
    max_tokens: int = 16
    min_tokens: int = 0
    temperature: float = 1.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    include_stop_str_in_output: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.validate()

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0

    def validate(self) -> None:
        def need(ok: bool, param: str, msg: str) -> None:
            if not ok:
                raise InvalidRequestError(f"{param} {msg}", param=param)

        need(_is_int(self.max_tokens) and self.max_tokens >= 1, "max_tokens", "must be an integer >= 1")
        need(_is_int(self.min_tokens) and self.min_tokens >= 0, "min_tokens", "must be an integer >= 0")
        need(self.min_tokens <= self.max_tokens, "min_tokens", "must not exceed max_tokens")
        need(_is_num(self.temperature) and 0.0 <= self.temperature <= 100.0,
             "temperature", "must be a number in [0, 100]")
        need(_is_int(self.top_k) and 0 <= self.top_k <= 1 << 31, "top_k",
             "must be an integer in [0, 2^31] (0 disables it)")
        need(_is_num(self.top_p) and 0.0 < self.top_p <= 1.0, "top_p", "must be a number in (0, 1]")
        need(self.seed is None or (_is_int(self.seed) and 0 <= self.seed < 1 << 63), "seed",
             "must be an integer in [0, 2^63)")
        need(all(isinstance(s, str) and s for s in self.stop), "stop", "must be non-empty strings")
        need(len(self.stop) <= 16, "stop", "may hold at most 16 strings")
        need(all(_is_int(t) and t >= 0 for t in self.stop_token_ids), "stop_token_ids",
             "must be non-negative integers")


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x == x  # rejects NaN
