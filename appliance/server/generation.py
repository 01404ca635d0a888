"""One request's trip through the engine, with the server's bookkeeping around it.

Admission (bounded queue, per-tenant caps) happens before the response starts, so a full queue is
a plain 503 and a tenant over its caps a plain 429; the ticket is given back however the request
ends, and the tokens it used join the tenant's usage of the day at that same moment. Leaving the
iteration early (client gone, cancellation, an error while writing, the tenant's quota running out)
closes the engine's stream, which aborts the request and frees its KV blocks at once.

The engine schedules fairly across tenants (the tenant is the request's group, its weight the
tenant's) and ends a request at its deadline (`request_timeout_s` after it arrived): 504 `timeout`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing, contextmanager
from dataclasses import dataclass

from appliance.server.admission import Ticket
from appliance.server.errors import ApiError, bad_request, timed_out
from appliance.server.fleet import Resident
from appliance.server.limits import caps_for, quota_error
from appliance.server.state import AppState, RequestContext
from appliance.server.tracing import EngineTimes
from engine import (
    ChunkSpec,
    EngineDeadError,
    InvalidRequestError,
    RequestFailedError,
    RequestOutput,
    SamplingParams,
)


@dataclass(slots=True)
class Job:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    salt: str
    served: Resident  # the model version the request was routed to
    prompt_param: str = "messages"  # the field named in context-length errors
    public_prefix_len: int = 0  # leading tokens shared across tenants in the prefix cache
    chunks: ChunkSpec | None = None  # retrieved chunks in the prompt, and whether to reuse their KV


def validate_job(job: Job) -> None:
    """Refuse, as a 400, what the engine would refuse (context length, token ids, params)."""
    try:
        job.served.engine.validate(job.request_id, job.prompt_ids, job.params)
    except InvalidRequestError as exc:
        raise _invalid(exc, job) from None


def _invalid(exc: InvalidRequestError, job: Job) -> ApiError:
    param = job.prompt_param if exc.param in ("messages", "prompt") else exc.param
    return bad_request(str(exc), param=param, code=exc.code or "invalid_value")


@contextmanager
def admitted(state: AppState, ctx: RequestContext, job: Job) -> Iterator[Ticket]:
    """A place in the bounded queue for the job, given back however the request ends."""
    assert ctx.principal is not None, "admission needs an authenticated principal"
    caps = caps_for(ctx.principal, ctx.tenant_row, state.config)
    ticket = state.admission.admit(job.request_id, len(job.prompt_ids), ctx.principal.tenant, caps)
    try:
        yield ticket
    finally:
        state.admission.release(ticket)
        if ctx.counts_usage:  # the same tokens the audit row adds to the usage table
            state.control.usage.add(ticket.tenant, ctx.prompt_tokens + ctx.completion_tokens)


async def run_job(state: AppState, ctx: RequestContext, job: Job, ticket: Ticket
                  ) -> AsyncIterator[RequestOutput]:
    """Yield the engine's outputs; raises ApiError when the engine or the server ends the request."""
    engine = job.served.engine
    tracker = _Tracker(EngineTimes(time.monotonic()))
    ctx.counts_usage = True
    weight = ctx.tenant_row.weight if ctx.tenant_row is not None else 1.0
    try:
        stream = engine.generate(job.request_id, job.prompt_ids, job.params, salt=job.salt,
                                 public_prefix_len=job.public_prefix_len, group=ticket.tenant,
                                 weight=weight, deadline=ctx.started + state.config.request_timeout_s,
                                 chunks=job.chunks)
        async with aclosing(stream) as outputs:
            async for out in outputs:
                tracker.update(state, ctx, ticket, out)
                if out.finished and out.finish_reason in _ENDED_BY_SERVER:
                    if out.text_delta:  # what was made before the end still goes out
                        yield dataclasses.replace(out, finished=False, finish_reason=None)
                    raise _ended(state, ticket, out)
                if not out.finished and _quota_spent(state, ctx, ticket):
                    tracker.finish_reason = "length"
                    yield dataclasses.replace(out, finished=True, finish_reason="length")
                    return
                yield out
    except InvalidRequestError as exc:
        raise _invalid(exc, job) from None
    except RequestFailedError as exc:
        raise ApiError(500, f"the request failed: {exc}", None, "request_failed") from None
    except EngineDeadError as exc:
        raise ApiError(500, f"the engine failed: {exc}", None, "engine_error") from None
    finally:
        tracker.finish(state, ctx)


_ENDED_BY_SERVER = frozenset({"abort", "timeout", "error"})


def _ended(state: AppState, ticket: Ticket, out: RequestOutput) -> ApiError:
    """The error for a request the engine ended without finishing it."""
    if out.finish_reason == "timeout":
        return timed_out(f"the request did not finish within the server's time limit of "
                         f"{state.config.request_timeout_s:g} s")
    if out.finish_reason == "error":
        return ApiError(500, f"the request failed: {out.error or 'unknown error'}", None, "request_failed")
    reason = ticket.abort_reason or "request_aborted"
    why = "the server is shutting down" if reason == "server_shutting_down" else reason.replace("_", " ")
    return ApiError(503, f"the request was aborted: {why}", None, reason, {"Retry-After": "10"})


def _quota_spent(state: AppState, ctx: RequestContext, ticket: Ticket) -> bool:
    """The tenant's quota ran out while this request ran: it ends now, keeping what it made."""
    if ctx.principal is None or ctx.principal.is_admin or ctx.tenant_row is None:
        return False
    inflight = state.admission.tenant_tokens(ticket.tenant)
    if not state.limits.quota_reached(ctx.tenant_row, inflight):
        return False
    ctx.cutoff = quota_error(ctx.tenant_row, state.control.usage.used(ticket.tenant) + inflight)
    ctx.error_code = "insufficient_quota"
    return True


@dataclass(slots=True)
class _Tracker:
    times: EngineTimes  # from the request's hand-over to the engine; also the request's trace
    first_token_at: float | None = None
    queue_time: float | None = None
    num_output_tokens: int = 0
    finish_reason: str = "abort"

    def update(self, state: AppState, ctx: RequestContext, ticket: Ticket, out: RequestOutput) -> None:
        metrics = state.metrics
        self.times.see(out)
        if self.first_token_at is None:
            self.first_token_at = time.monotonic()
            self.queue_time = out.queue_time_s
            state.admission.started(ticket)
            metrics.prompt_tokens.inc(out.usage.prompt_tokens)
        state.admission.count_tokens(ticket, out.usage.prompt_tokens + out.usage.completion_tokens)
        self.num_output_tokens += len(out.token_ids)
        metrics.generation_tokens.inc(len(out.token_ids))
        ctx.prompt_tokens = out.usage.prompt_tokens
        ctx.cached_tokens = out.usage.cached_tokens
        ctx.completion_tokens = out.usage.completion_tokens
        if out.finished:
            self.finish_reason = out.finish_reason or "stop"

    def finish(self, state: AppState, ctx: RequestContext) -> None:
        started = self.times.submitted
        ttft = None if self.first_token_at is None else self.first_token_at - started
        e2e = time.monotonic() - started
        state.metrics.observe_request(ttft, e2e, self.queue_time, self.num_output_tokens, self.finish_reason)
        ctx.ttft_s = ttft
        if ttft is not None and self.num_output_tokens > 1:
            ctx.tpot_s = (e2e - ttft) / (self.num_output_tokens - 1)
        ctx.trace.engine_stages(self.times, ctx.prompt_tokens, ctx.cached_tokens, ctx.completion_tokens,
                                self.finish_reason)


def usage_dict(ctx: RequestContext) -> dict:
    return {"prompt_tokens": ctx.prompt_tokens, "completion_tokens": ctx.completion_tokens,
            "total_tokens": ctx.prompt_tokens + ctx.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": ctx.cached_tokens}}
