"""The operator's RAG system prompt computed while a query's retrieval runs, when it is not cached.

Every RAG prompt opens with the same system prompt, public in the prefix cache, so it is nearly
always a prefix hit. After a flush, an eviction or a restart it is not: then a query would compute
it after its retrieval. Instead the query starts a one-token request for the system prompt alone
before it embeds the question, in the query's own fair-share group, so the engine computes it while
the question is embedded and searched; the query's prefill then hits it (or waits a step for it,
as for any prefix another request is computing). Nothing is computed when it is cached already;
the query never waits for the warm-up itself.
"""

from __future__ import annotations

import asyncio
import logging

from engine import SamplingParams

log = logging.getLogger(__name__)
_running: set[asyncio.Task] = set()  # referenced until done (the loop keeps only weak references)


def system_prompt_ids(engine, system: str) -> list[int]:
    return engine.tokenizer.encode_chat_prefix([{"role": "system", "content": system}])


def start_warmup(engine, system: str, tenant: str, request_id: str) -> asyncio.Task:
    """In the background: compute the system prompt's full blocks unless the cache holds them."""
    task = asyncio.create_task(_warm(engine, system_prompt_ids(engine, system), tenant, f"warm-{request_id}"))
    _running.add(task)
    task.add_done_callback(_running.discard)
    return task


async def _warm(engine, ids: list[int], tenant: str, request_id: str) -> bool:
    """Whether it computed the prompt. The cache is looked up only when the engine is between steps
    (it holds its lock for a whole step): no query waits for it, and no worker thread is taken
    from retrieval. A busy engine is serving others, so its system prompt is cached anyway."""
    full = len(ids) // engine.block_size * engine.block_size
    try:
        cached = engine.num_cached_tokens(ids, tenant, len(ids), blocking=False) if full else None
        if cached is None or cached >= full:
            return False
        params = SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True)
        async for _ in engine.generate(request_id, ids, params, tenant, len(ids)):
            pass
        return True
    except Exception as exc:  # only an optimisation: the query computes the prompt itself
        log.warning("system prompt warm-up %s failed: %s", request_id, exc)
        return False
