"""`/v1/models`, `/v1/chat/completions`, `/v1/completions`: the OpenAI-compatible surface.

Streaming follows OpenAI's SSE shape: one id for the whole stream, a role-first delta (chat), text
deltas, a chunk carrying finish_reason, an optional usage chunk with empty choices, `data: [DONE]`.
"""

from __future__ import annotations

import asyncio
import json
import time
from contextlib import aclosing
from dataclasses import dataclass

from aiohttp import web

from appliance.server.errors import ApiError
from appliance.server.generation import Job, admitted, run_job, usage_dict, validate_job
from appliance.server.openai_params import (
    StreamOptions,
    parse_messages,
    parse_prompt,
    parse_sampling,
    parse_stream,
    reject_unsupported,
)
from appliance.server.params import read_json
from appliance.server.sse import SseWriter
from appliance.server.state import AppState, RequestContext, ctx_of, principal_of, state_of
from appliance.server.version_pick import pick, requested_version


@dataclass(slots=True)
class Shape:
    """How one kind of completion is shaped on the wire."""

    id: str
    model: str
    is_chat: bool
    created: int

    @property
    def chunk_object(self) -> str:
        return "chat.completion.chunk" if self.is_chat else "text_completion"

    def chunk(self, choices: list[dict], usage: dict | None = None, with_usage: bool = False) -> dict:
        out = {"id": self.id, "object": self.chunk_object, "created": self.created, "model": self.model,
               "choices": choices}
        if with_usage:
            out["usage"] = usage
        return out

    def delta(self, text: str | None, finish_reason: str | None = None, role: bool = False) -> dict:
        if self.is_chat:
            delta = {"role": "assistant", "content": ""} if role else ({"content": text} if text else {})
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}

    def full(self, text: str, finish_reason: str | None, usage: dict) -> dict:
        if self.is_chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                      "finish_reason": finish_reason}
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        return {"id": self.id, "object": "chat.completion" if self.is_chat else "text_completion",
                "created": self.created, "model": self.model, "choices": [choice], "usage": usage,
                "system_fingerprint": None}


async def list_models(request: web.Request) -> web.Response:
    """The served model name (routed across versions) and the versions this key may name."""
    return web.json_response({"object": "list", "data": _cards(request)})


async def get_model(request: web.Request) -> web.Response:
    for card in _cards(request):
        if card["id"] == request.match_info["model"]:
            return web.json_response(card)
    raise ApiError(404, f"The model '{request.match_info['model']}' does not exist", "model",
                   "model_not_found")


def _cards(request: web.Request) -> list[dict]:
    state = state_of(request)
    fleet = state.need_fleet()
    live = fleet.live
    assert live is not None
    cards = [_model_card(state, fleet.alias, live.context_limit, None)]
    for name in sorted(fleet.allowed(principal_of(request).tenant)):
        limit = fleet.residents[name].context_limit
        cards.append(_model_card(state, name, limit, fleet.versions[name].state))
    return cards


def _model_card(state: AppState, name: str, context_limit: int, version_state: str | None) -> dict:
    card = {"id": name, "object": "model", "created": int(state.started_at), "owned_by": "appliance",
            "max_model_len": context_limit}
    if version_state is not None:
        card["version_state"] = version_state
    return card


async def chat_completions(request: web.Request) -> web.StreamResponse:
    state, ctx = state_of(request), ctx_of(request)
    body = await read_json(request, state.config.max_body_bytes)
    requested = requested_version(body, state)
    model = body.string("model")
    messages = parse_messages(body)
    reject_unsupported(body)
    options = parse_stream(body)
    with ctx.trace.stage("prompt"):
        served, prompt_ids = await pick(state, ctx, request, body, requested,
                                        lambda engine: _chat_ids(engine, messages), kind="chat")
    if state.config.log_prompts:
        ctx.prompt = json.dumps(messages, ensure_ascii=False)
    job = Job(f"chatcmpl-{ctx.request_id}", prompt_ids,
              parse_sampling(body, state, len(prompt_ids), served.context_limit),
              principal_of(request).tenant, served, "messages")
    if body.boolean("public_prefix", False):  # share the system prompt's KV across tenants
        job.public_prefix_len = await asyncio.to_thread(served.engine.tokenizer.system_prefix_len, messages,
                                                        prompt_ids)
    shape = Shape(job.request_id, model, True, int(time.time()))
    return await _complete(request, state, ctx, job, shape, options)


def _chat_ids(engine, messages: list[dict]) -> list[int]:
    try:
        return engine.tokenizer.apply_chat_template(messages)
    except ValueError as exc:
        raise ApiError(400, f"cannot apply the chat template: {exc}", "messages", "invalid_value") from None
    except Exception as exc:  # jinja raises TemplateError for message orders the template refuses
        raise ApiError(400, f"the chat template refused these messages: {exc}", "messages",
                       "invalid_value") from None


async def completions(request: web.Request) -> web.StreamResponse:
    state, ctx = state_of(request), ctx_of(request)
    body = await read_json(request, state.config.max_body_bytes)
    requested = requested_version(body, state)
    model = body.string("model")
    prompt = parse_prompt(body, _vocab_size(state, requested))
    reject_unsupported(body)
    options = parse_stream(body)
    with ctx.trace.stage("prompt"):
        served, prompt_ids = await pick(state, ctx, request, body, requested,
                                        lambda engine: _prompt_ids(engine, prompt), kind="completion")
    if state.config.log_prompts:
        ctx.prompt = prompt if isinstance(prompt, str) else json.dumps(prompt)
    job = Job(f"cmpl-{ctx.request_id}", prompt_ids,
              parse_sampling(body, state, len(prompt_ids), served.context_limit),
              principal_of(request).tenant, served, "prompt")
    shape = Shape(job.request_id, model, False, int(time.time()))
    return await _complete(request, state, ctx, job, shape, options)


def _vocab_size(state: AppState, requested: str | None) -> int:
    fleet = state.need_fleet()
    resident = fleet.residents.get(requested) if requested else fleet.live
    return (resident or fleet.live).engine.tokenizer.vocab_size


def _prompt_ids(engine, prompt: str | list[int]) -> list[int]:
    if isinstance(prompt, str):
        return engine.tokenizer.encode(prompt)
    if prompt and max(prompt) >= engine.tokenizer.vocab_size:  # the routed version's vocabulary
        raise ApiError(400, f"prompt token ids must be in [0, {engine.tokenizer.vocab_size})", "prompt",
                       "invalid_value")
    return prompt


async def _complete(request: web.Request, state: AppState, ctx: RequestContext, job: Job, shape: Shape,
                    options: StreamOptions) -> web.StreamResponse:
    validate_job(job)
    with admitted(state, ctx, job) as ticket:
        if options.stream:
            return await _stream(request, state, ctx, job, ticket, shape, options.include_usage)
        parts, finish_reason = [], None
        async with aclosing(run_job(state, ctx, job, ticket)) as outputs:
            async for out in outputs:
                parts.append(out.text_delta)
                finish_reason = out.finish_reason if out.finished else None
        return web.json_response(shape.full("".join(parts), finish_reason, usage_dict(ctx)))


async def _stream(request: web.Request, state: AppState, ctx: RequestContext, job: Job, ticket,
                  shape: Shape, include_usage: bool) -> web.StreamResponse:
    sse = SseWriter(request, ctx)
    try:
        await sse.start()
        if shape.is_chat:
            await sse.send(shape.chunk([shape.delta(None, role=True)], None, include_usage))
        async with aclosing(run_job(state, ctx, job, ticket)) as outputs:
            async for out in outputs:
                if out.text_delta:
                    await sse.send(shape.chunk([shape.delta(out.text_delta)], None, include_usage))
                if out.finished:
                    await sse.send(shape.chunk([shape.delta(None, out.finish_reason)], None, include_usage))
        if include_usage:
            await sse.send(shape.chunk([], usage_dict(ctx), True))
        if ctx.cutoff is not None:  # the quota ran out: finish_reason "length", then why
            await sse.fail(ctx.cutoff)
        else:
            await sse.done()
    except ApiError as err:
        await sse.fail(err)
    except ConnectionResetError:
        ctx.client_gone = True
    return sse.response
