"""Differential stress test with chunk KV reuse on: RAG answers under pool pressure equal answers alone.

The companion of test_stress_differential.py for `kv_reuse: "chunks"`. Reused chunk KV is an
approximation, so an answer is only reproducible when the KV it reuses is: here each tenant's
collection is precomputed with `"pin": true`, so every chunk a query retrieves is moved in from the
same stored blocks, alone or in a crowd. Then the pool is made small (the pinned chunks of two
tenants take 32 of its 60 blocks, two RAG prompts with their answers about fill the rest) and 48
queries arrive at once: admissions evict cached blocks, decodes preempt running sequences, and
preempted ones plan their chunk moves again. (A prompt's chunks are moved in within its first step,
so the pool fills at admission; the answers are long enough to need blocks while decoding.) A held
or pinned chunk evicted under a running request, a move to the wrong position or
a block named for the prefix cache while it holds moved KV would all change answers.
"""

from __future__ import annotations

import asyncio
import random
import time

import aiohttp
import pytest

from tests.server.conftest import make_tenant
from tests.server.helpers import ADMIN_KEY, ServerProcess, post_json
from tests.server.test_rag import _call, _upload
from tests.server.test_stress_differential import PARAGRAPHS, pool_server

TARGET_BLOCKS = 60
MAX_TOKENS = 24
REPEATS_PER_TENANT = 2
STRESS_TIMEOUT_S = 300
QUESTIONS = [
    "What did the schooner Marigold bring into the bay?",
    "When do orchard growers prune their pear trees?",
    "How many volumes did the library open with?",
    "What keeps the speed of a steam engine steady?",
    "How long did the mill stand idle in 1934?",
    "How many frames does a strong hive cover in summer?",
    "Which records were kept in 1871 and 1903?",
    "What happened to rivers, trees and bees in dry years?",
    "Who gave the library a telescope?",
    "What turns the stroke of a piston into rotation?",
    "Why are clippings burned?",
    "Where is honey stored in a hive?",
]


@pytest.fixture(scope="module")
def chunk_pool_server(tmp_path_factory):
    with pool_server(tmp_path_factory.mktemp("stress-chunks") / "data", TARGET_BLOCKS) as proc:
        yield proc


def _tenant_with_pinned_collection(server: ServerProcess, run, name: str) -> str:
    key = make_tenant(server, name)
    files = {f"p{i}/paragraph-{i}.txt": text for i, text in enumerate(PARAGRAPHS)}
    status, body = run(_upload(server.url, key, "kb", files))
    assert status == 200, body
    status, done = run(_call("POST", f"{server.url}/admin/chunks/precompute", ADMIN_KEY,
                             {"tenant": name, "collection": "kb", "pin": True}))
    assert status == 200, done
    assert done["resident_chunks"] == done["chunks"] == len(PARAGRAPHS) and done["pinned_blocks"] > 0
    return key


async def _ask(session: aiohttp.ClientSession, url: str, question: str, key: str) -> str:
    body = {"query": question, "collection": "kb", "top_k": 3, "max_tokens": MAX_TOKENS,
            "temperature": 0.0, "ignore_eos": True, "kv_reuse": "chunks"}
    status, payload, _ = await post_json(session, url + "/v1/rag/query", body, key)
    assert status == 200, (status, payload)
    assert payload["usage"]["completion_tokens"] == MAX_TOKENS, payload
    return payload["answer"]


async def _alone(url: str, key: str) -> list[str]:
    """Each question on the idle server after a flush (only the pinned chunks stay cached)."""
    answers = []
    async with aiohttp.ClientSession() as session:
        for question in QUESTIONS:
            status, _, _ = await post_json(session, url + "/admin/cache/flush", {}, ADMIN_KEY)
            assert status == 200
            answers.append(await _ask(session, url, question, key))
    return answers


async def _together(url: str, keys: list[str]) -> list[tuple[int, str]]:
    jobs = [(i, key) for key in keys for i in range(len(QUESTIONS)) for _ in range(REPEATS_PER_TENANT)]
    random.Random(12).shuffle(jobs)
    connector = aiohttp.TCPConnector(limit=len(jobs) + 1)
    timeout = aiohttp.ClientTimeout(total=STRESS_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        texts = await asyncio.gather(*(_ask(session, url, QUESTIONS[i], key) for i, key in jobs))
    return [(i, text) for (i, _), text in zip(jobs, texts, strict=True)]


def test_chunk_reuse_answers_under_pressure_equal_answers_alone(chunk_pool_server, run):
    server = chunk_pool_server
    keys = [_tenant_with_pinned_collection(server, run, name) for name in ("chunks-a", "chunks-b")]
    started = time.monotonic()
    alone = run(_alone(server.url, keys[0]))
    before = server.get_json("/admin/stats")
    results = run(_together(server.url, keys))
    after = server.get_json("/admin/stats")
    hits = after["chunk_cache"]["hit_tokens"] - before["chunk_cache"]["hit_tokens"]
    preemptions = after["requests"]["preemptions_total"] - before["requests"]["preemptions_total"]
    evictions = after["kv"]["evictions_total"] - before["kv"]["evictions_total"]
    print(f"stress with chunk reuse: {len(results)} requests, {time.monotonic() - started:.1f} s, "
          f"{preemptions} preemptions, {evictions} evictions, {hits} chunk hit tokens")
    # tenant b's chunks are its own copies of the same text: its answers must match tenant a's alone
    wrong = [(QUESTIONS[i], alone[i], text) for i, text in results if text != alone[i]]
    assert not wrong, f"{len(wrong)} of {len(results)} answers differ from the answer alone: {wrong[:4]}"
    assert preemptions > 0 or evictions > 0, (preemptions, evictions)  # the pool really was too small
    assert hits > 0
    assert after["kv"]["pinned_blocks"] == before["kv"]["pinned_blocks"]  # pinned chunks stayed put
