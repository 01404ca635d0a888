"""`POST /admin/chunks/precompute`: store the KV of every chunk of a collection before it is asked.

With `kv_reuse: "chunks"` a chunk is stored the first time a query computes it in an exact context,
so a cold collection gains little at first. This admin action computes each chunk once as the only
chunk of a RAG prompt (the server's system prompt, then `[1] <source>` and the chunk), which is
exactly the context the first chunk of any later prompt has: there its KV is reused unchanged, and
elsewhere it is moved (engine/chunk_kv.py). The requests run in their own fair-share group with a
low weight, so live traffic keeps its turn, and under a salt of their own: after each batch their
prompts' blocks are dropped and only the chunks stay (in the tenant's namespace). Chunks beyond what
the KV pool can hold are evicted again (least recently used first): the answer says how many are
resident afterwards. With `"pin": true` each chunk is pinned as soon as it is stored (like a pinned
prefix: never evicted until `POST /admin/cache/unpin`), so a hot collection stays resident whatever
traffic passes through the pool.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import aclosing

from aiohttp import web

from appliance.server.errors import not_found
from appliance.server.params import read_json
from appliance.server.rag_routes import valid_collection
from appliance.server.state import principal_of, state_of
from engine import ChunkSpec, SamplingParams
from rag import build_rag_prompt

log = logging.getLogger(__name__)
PRECOMPUTE_WEIGHT = 0.1  # its fair share against a live tenant's (1.0)
PRECOMPUTE_SALT = "\x00precompute:"  # + tenant: the prompts' own blocks, dropped after each batch
BATCH = 32  # chunks in flight at once


async def precompute(request: web.Request) -> web.Response:
    """Body: {"collection", "tenant" (default: the caller's own), "pin"} -> chunks computed, resident
    and pinned."""
    state = state_of(request)
    body = await read_json(request, state.config.max_body_bytes)
    tenant = body.string("tenant", principal_of(request).tenant, max_len=64)
    collection = valid_collection(body.string("collection", max_len=64))
    pin = body.boolean("pin", False)
    engine = state.need_engine()
    hits = await asyncio.to_thread(state.need_rag().chunks, tenant, collection)
    if not hits:
        raise not_found(f"collection '{collection}' of tenant '{tenant}' has no chunks", "collection",
                        "collection_not_found")
    started, system = time.monotonic(), state.config.rag_system_prompt
    prompts = await asyncio.to_thread(lambda: [_prompt(engine, system, hit) for hit in hits])
    results: list[int] = []
    pinned = 0
    for start in range(0, len(prompts), BATCH):
        batch = prompts[start:start + BATCH]
        results += await asyncio.gather(*(_store_one(engine, tenant, ids, spans, hits[n].id, n)
                                          for n, (ids, spans) in enumerate(batch, start=start)))
        await asyncio.to_thread(engine.flush_prefix_cache, PRECOMPUTE_SALT + tenant)
        if pin:
            pinned += await asyncio.to_thread(_pin, engine, tenant, batch)
    resident = await asyncio.to_thread(_num_resident, engine, tenant, prompts)
    return web.json_response({"tenant": tenant, "collection": collection, "chunks": len(hits),
                              "computed_tokens": sum(r for r in results if r > 0),
                              "failed_chunks": sum(r < 0 for r in results), "resident_chunks": resident,
                              "pinned_blocks": pinned, "seconds": round(time.monotonic() - started, 3)})


def _prompt(engine, system: str, hit) -> tuple[list[int], list[tuple[int, int]]]:
    prompt = build_rag_prompt(system, [hit], "")
    return engine.tokenizer.apply_chat_template_with_spans(prompt.messages(), list(prompt.chunk_texts))


async def _store_one(engine, tenant: str, ids: list[int], spans: list[tuple[int, int]], chunk_id: str,
                     n: int) -> int:
    """Run one single-chunk prompt in kv_reuse "chunks" mode (that stores the chunk); returns its
    prompt tokens, or -1 when it failed (a chunk that cannot run does not stop the others)."""
    if not spans:
        return 0
    params = SamplingParams(max_tokens=1, temperature=0.0)
    stream = engine.generate(f"precompute-{time.monotonic_ns()}-{n}", ids, params,
                             salt=PRECOMPUTE_SALT + tenant, group="precompute", weight=PRECOMPUTE_WEIGHT,
                             chunks=ChunkSpec(tuple(spans), "chunks", namespace=tenant))
    try:
        async with aclosing(stream) as outputs:
            async for _ in outputs:
                pass
    except Exception as exc:
        log.warning("precomputing chunk %s failed: %s", chunk_id, exc)
        return -1
    return len(ids)


def _pin(engine, tenant: str, prompts: list[tuple[list[int], list[tuple[int, int]]]]) -> int:
    return sum(engine.pin_chunk(tenant, ids[spans[0][0]:spans[0][1]]) for ids, spans in prompts if spans)


def _num_resident(engine, tenant: str, prompts: list[tuple[list[int], list[tuple[int, int]]]]) -> int:
    return sum(bool(spans) and engine.has_chunk(tenant, ids[spans[0][0]:spans[0][1]])
               for ids, spans in prompts)
