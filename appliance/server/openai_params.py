"""Turning OpenAI-style request bodies into token ids and SamplingParams, refusing what we cannot honour.

Unknown fields are ignored (as vLLM does), but fields that would change the answer in a way this
server does not implement (n > 1, logprobs, tools, penalties, ...) are refused with a 400 rather than
silently dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

from appliance.server.errors import bad_request
from appliance.server.params import Body
from appliance.server.state import AppState
from engine import InvalidRequestError, SamplingParams

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
MAX_MESSAGES = 1024
MAX_STOP = 16
SEED_RANGE = (-(2**63), 2**64 - 1)
INT32_MAX = 2**31 - 1


@dataclass(slots=True)
class StreamOptions:
    stream: bool
    include_usage: bool


def parse_stream(body: Body) -> StreamOptions:
    stream = body.boolean("stream", False)
    options = body.obj("stream_options")
    if options and not stream:
        raise bad_request("'stream_options' is only allowed when 'stream' is true", "stream_options")
    include = options.get("include_usage")
    if include is not None and not isinstance(include, bool):
        raise bad_request("'stream_options.include_usage' must be a boolean", "stream_options.include_usage",
                          "invalid_type")
    return StreamOptions(stream, bool(include))


def reject_unsupported(body: Body) -> None:
    if body.integer("n", 1, minimum=1) != 1:
        raise bad_request("only n = 1 is supported", "n", "unsupported_value")
    for name in ("presence_penalty", "frequency_penalty"):
        if body.number(name, 0.0, -2.0, 2.0) != 0.0:
            raise bad_request(f"'{name}' is not supported (only 0)", name, "unsupported_value")
    for name in ("logprobs", "echo"):
        if body.raw(name) not in (None, False):
            raise bad_request(f"'{name}' is not supported", name, "unsupported_value")
    if body.raw("top_logprobs") is not None:
        raise bad_request("'top_logprobs' is not supported", "top_logprobs", "unsupported_value")
    for name in ("tools", "functions", "logit_bias", "suffix"):
        if body.raw(name) not in (None, [], {}, ""):
            raise bad_request(f"'{name}' is not supported", name, "unsupported_value")
    fmt = body.raw("response_format")
    if fmt is not None and (not isinstance(fmt, dict) or fmt.get("type") != "text"):
        raise bad_request("only response_format {\"type\": \"text\"} is supported", "response_format",
                          "unsupported_value")
    if body.integer("best_of", 1, minimum=1) != 1:
        raise bad_request("only best_of = 1 is supported", "best_of", "unsupported_value")


def parse_messages(body: Body) -> list[dict]:
    messages = body.raw("messages")
    if messages is None:
        raise bad_request("'messages' is required", "messages", "missing_required_parameter")
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty list", "messages", "invalid_type")
    if len(messages) > MAX_MESSAGES:
        raise bad_request(f"'messages' may hold at most {MAX_MESSAGES} items", "messages", "invalid_value")
    return [_message(i, m) for i, m in enumerate(messages)]


def _message(index: int, message: object) -> dict:
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        raise bad_request(f"'{where}' must be an object with 'role' and 'content'", where, "invalid_type")
    role = message.get("role")
    if role not in ROLES:
        raise bad_request(f"'{where}.role' must be one of {', '.join(ROLES)}", f"{where}.role",
                          "invalid_value")
    return {"role": ROLES[role], "content": _content(where, message.get("content"))}


def _content(where: str, content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            is_text = isinstance(part, dict) and part.get("type") == "text"
            if not (is_text and isinstance(part.get("text"), str)):
                raise bad_request(f"'{where}.content' parts must be {{\"type\": \"text\", \"text\": ...}}; "
                                  "other content types are not supported", f"{where}.content",
                                  "invalid_value")
            texts.append(part["text"])
        return "".join(texts)
    raise bad_request(f"'{where}.content' must be a string or a list of text parts", f"{where}.content",
                      "invalid_type")


def parse_prompt(body: Body, vocab_size: int) -> str | list[int]:
    """A completions prompt: a string, a list of token ids, or a one-item list of either."""
    prompt = body.raw("prompt")
    if prompt is None:
        raise bad_request("'prompt' is required", "prompt", "missing_required_parameter")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str):
        if not prompt:
            raise bad_request("'prompt' must not be empty", "prompt", "invalid_value")
        return prompt
    if isinstance(prompt, list) and prompt and all(_is_int(t) for t in prompt):
        if not all(0 <= t < vocab_size for t in prompt):
            raise bad_request(f"prompt token ids must be in [0, {vocab_size})", "prompt", "invalid_value")
        return prompt
    if isinstance(prompt, list) and len(prompt) > 1:
        raise bad_request("batched prompts are not supported; send one prompt per request", "prompt",
                          "unsupported_value")
    raise bad_request("'prompt' must be a string or a list of token ids", "prompt", "invalid_type")


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def parse_sampling(body: Body, state: AppState, num_prompt_tokens: int, context_limit: int,
                   read_top_k: bool = True) -> SamplingParams:
    """SamplingParams from the body; max_tokens defaults to what fits in the serving version's context,
    capped by the server default. `read_top_k=False` where `top_k` means something else (the chunk
    count of /v1/rag/query)."""
    room = max(1, context_limit - num_prompt_tokens)
    default_max = min(state.config.default_max_tokens, room)
    max_tokens = body.integer("max_completion_tokens", None, minimum=1)
    if max_tokens is None:
        max_tokens = body.integer("max_tokens", default_max, minimum=1)
    try:
        return SamplingParams(
            max_tokens=max_tokens,
            min_tokens=body.integer("min_tokens", 0, minimum=0),
            temperature=body.number("temperature", 1.0, 0.0, 100.0),
            top_k=max(0, body.integer("top_k", 0, minimum=-1, maximum=INT32_MAX)) if read_top_k else 0,
            top_p=body.number("top_p", 1.0, 0.0, 1.0),
            seed=body.integer("seed", None, *SEED_RANGE),
            stop=body.string_list("stop", MAX_STOP),
            stop_token_ids=_token_ids(body, "stop_token_ids"),
            ignore_eos=body.boolean("ignore_eos", False),
        )
    except InvalidRequestError as exc:
        raise bad_request(str(exc), exc.param, exc.code or "invalid_value") from None


def _token_ids(body: Body, name: str) -> list[int]:
    value = body.raw(name, [])
    if not isinstance(value, list) or len(value) > 64 or not all(_is_int(t) and 0 <= t <= INT32_MAX
                                                                for t in value):
        raise bad_request(f"'{name}' must be a list of at most 64 non-negative integers", name,
                          "invalid_type")
    return value
