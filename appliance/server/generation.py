"""One request's trip through the engine, with the server's bookkeeping around it.

Admission (bounded queue) happens before the response starts, so a full queue is a plain 503; the
ticket is given back however the request ends. Leaving the iteration early (client gone,
cancellation, an error while writing) closes the engine's stream, which aborts the request and
frees its KV blocks at once.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing, contextmanager
from dataclasses import dataclass

from appliance.server.admission import Ticket
from appliance.server.errors import ApiError, bad_request
from appliance.server.state import AppState, RequestContext
from engine import EngineDeadError, InvalidRequestError, RequestOutput, SamplingParams


@dataclass(slots=True)
class Job:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    salt: str
    prompt_param: str = "messages"  # the field named in context-length errors
    public_prefix_len: int = 0  # leading tokens shared across tenants in the prefix cache


def validate_job(state: AppState, job: Job) -> None:
    """Refuse, as a 400, what the engine would refuse (context length, token ids, params)."""
    try:
        state.need_engine().validate(job.request_id, job.prompt_ids, job.params)
    except InvalidRequestError as exc:
        raise _invalid(exc, job) from None


def _invalid(exc: InvalidRequestError, job: Job) -> ApiError:
    param = job.prompt_param if exc.param in ("messages", "prompt") else exc.param
    return bad_request(str(exc), param=param, code=exc.code or "invalid_value")


@contextmanager
def admitted(state: AppState, job: Job) -> Iterator[Ticket]:
    """A place in the bounded queue for the job, given back however the request ends."""
    ticket = state.admission.admit(job.request_id, len(job.prompt_ids))
    try:
        yield ticket
    finally:
        state.admission.release(ticket)


async def run_job(state: AppState, ctx: RequestContext, job: Job, ticket: Ticket
                  ) -> AsyncIterator[RequestOutput]:
    """Yield the engine's outputs; raises ApiError when the engine or the server ends the request."""
    engine = state.need_engine()
    tracker = _Tracker(time.monotonic())
    ctx.counts_usage = True
    try:
        stream = engine.generate(job.request_id, job.prompt_ids, job.params, salt=job.salt,
                                 public_prefix_len=job.public_prefix_len)
        async with aclosing(stream) as outputs:
            async for out in outputs:
                tracker.update(state, ctx, ticket, out)
                if out.finished and out.finish_reason == "abort":
                    raise ApiError(503, "the request was aborted: the server is shutting down", None,
                                   ticket.abort_reason or "request_aborted", {"Retry-After": "10"})
                yield out
    except InvalidRequestError as exc:
        raise _invalid(exc, job) from None
    except EngineDeadError as exc:
        raise ApiError(500, f"the engine failed: {exc}", None, "engine_error") from None
    finally:
        tracker.finish(state)


@dataclass(slots=True)
class _Tracker:
    started: float
    first_token_at: float | None = None
    queue_time: float | None = None
    num_output_tokens: int = 0
    finish_reason: str = "abort"

    def update(self, state: AppState, ctx: RequestContext, ticket: Ticket, out: RequestOutput) -> None:
        metrics = state.metrics
        if self.first_token_at is None:
            self.first_token_at = time.monotonic()
            self.queue_time = out.queue_time_s
            state.admission.started(ticket)
            metrics.prompt_tokens.inc(out.usage.prompt_tokens)
        self.num_output_tokens += len(out.token_ids)
        metrics.generation_tokens.inc(len(out.token_ids))
        ctx.prompt_tokens = out.usage.prompt_tokens
        ctx.cached_tokens = out.usage.cached_tokens
        ctx.completion_tokens = out.usage.completion_tokens
        if out.finished:
            self.finish_reason = out.finish_reason or "stop"

    def finish(self, state: AppState) -> None:
        ttft = None if self.first_token_at is None else self.first_token_at - self.started
        state.metrics.observe_request(ttft, time.monotonic() - self.started, self.queue_time,
                                      self.num_output_tokens, self.finish_reason)


def usage_dict(ctx: RequestContext) -> dict:
    return {"prompt_tokens": ctx.prompt_tokens, "completion_tokens": ctx.completion_tokens,
            "total_tokens": ctx.prompt_tokens + ctx.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": ctx.cached_tokens}}
