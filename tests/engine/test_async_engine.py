"""The asyncio API: concurrent streams, abort frees blocks at once, errors reach the caller."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from engine import AsyncEngine, InvalidRequestError, SamplingParams


@pytest.fixture
def aengine(engine):
    a = AsyncEngine(engine)
    a.start()
    yield a
    a.shutdown()


def _ids(a: AsyncEngine, text: str) -> list[int]:
    return a.tokenizer.apply_chat_template([{"role": "user", "content": text}])


async def _collect(a: AsyncEngine, rid: str, ids: list[int], params: SamplingParams):
    outs = [o async for o in a.generate(rid, ids, params)]
    return outs


async def test_concurrent_streams_match_offline(aengine, engine):
    params = SamplingParams(max_tokens=10, temperature=0.0)
    texts = ["Name a fruit.", "What is the sun?", "Count to five."]
    results = await asyncio.gather(*(_collect(aengine, f"c{i}", _ids(aengine, t), params)
                                     for i, t in enumerate(texts)))
    for outs in results:
        assert outs[-1].finished and all(not o.finished for o in outs[:-1])
        assert outs[0].queue_time_s is not None
    texts_out = ["".join(o.text_delta for o in outs) for outs in results]
    assert all(texts_out)
    stats = await aengine.get_stats()
    assert stats.num_running == 0 and stats.used_blocks == 0


async def test_leaving_the_stream_aborts_and_frees(aengine):
    params = SamplingParams(max_tokens=200, temperature=0.0, ignore_eos=True)
    gen = aengine.generate("long", _ids(aengine, "Tell me a long story."), params)
    n = 0
    async for _ in gen:
        n += 1
        if n == 3:
            break
    await gen.aclose()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        stats = aengine.stats()
        if stats.num_running == 0 and stats.used_blocks == 0:
            break
        await asyncio.sleep(0.05)
    assert stats.num_running == 0 and stats.used_blocks == 0
    assert stats.requests_finished.get("abort", 0) >= 1


async def test_invalid_request_raises_to_caller(aengine):
    with pytest.raises(InvalidRequestError):
        async for _ in aengine.generate("bad", [5] * 100_000, SamplingParams(max_tokens=4)):
            pass
    # the engine still serves
    outs = await _collect(aengine, "ok", _ids(aengine, "Hi"), SamplingParams(max_tokens=3, temperature=0.0))
    assert outs[-1].finished


async def test_event_loop_is_not_blocked(aengine):
    params = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)
    task = asyncio.create_task(_collect(aengine, "bg", _ids(aengine, "Describe a cat."), params))
    ticks = 0
    while not task.done():
        await asyncio.sleep(0.01)
        ticks += 1
    assert ticks > 5  # the loop kept turning while the engine thread worked
    assert (await task)[-1].finished


async def test_from_config_loads_the_model_on_the_thread_that_steps(monkeypatch):
    """One thread runs every torch op of the engine: loading on another leaves two OpenMP teams."""
    from engine import EngineConfig, LLMEngine

    threads: dict[str, set[int]] = {"load": set(), "step": set()}
    init, step = LLMEngine.__init__, LLMEngine.step

    def recording_init(self, *args, **kwargs):
        threads["load"].add(threading.get_ident())
        init(self, *args, **kwargs)

    def recording_step(self):
        threads["step"].add(threading.get_ident())
        return step(self)

    monkeypatch.setattr(LLMEngine, "__init__", recording_init)
    monkeypatch.setattr(LLMEngine, "step", recording_step)
    a = AsyncEngine.from_config(EngineConfig(device="cpu", dtype="float32", kv_cache_gib=0.05))
    assert not a.is_running  # loaded, but the loop waits for start()
    a.start()
    try:
        ids = _ids(a, "Name a fruit.")
        outs = await _collect(a, "t0", ids, SamplingParams(max_tokens=3, temperature=0.0))
    finally:
        a.shutdown()
    assert outs[-1].finished
    assert threads["load"] == threads["step"] and threading.get_ident() not in threads["step"]


def test_from_config_raises_a_load_error_on_the_callers_thread(tmp_path):
    from engine import EngineConfig

    with pytest.raises(Exception, match="not-a-model"):
        AsyncEngine.from_config(EngineConfig(model=str(tmp_path / "not-a-model.gguf")))
    assert not [t for t in threading.enumerate() if t.name == "engine-step-loop"]
