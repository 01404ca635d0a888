"""The asyncio face of the engine: the step loop runs in its own thread, never on the event loop.

Callers on an event loop add requests and aborts through a command queue (non-blocking) and read
each request's outputs from an asyncio.Queue fed with call_soon_threadsafe. Anything that must read
or change the engine's state directly (stats, flush) takes the engine lock in a worker thread.

A request that fails on its own raises RequestFailedError from its stream alone. A step that fails
for every sequence is an engine fault: the live requests end with EngineDeadError, the cached KV is
dropped and the loop goes on with an empty engine; health() reports faults that repeat.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass

from engine.chunk_kv import ChunkSpec
from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.outputs import EngineStats, RequestOutput
from engine.sampling_params import SamplingParams
from engine.sequence import Sequence

log = logging.getLogger(__name__)


# This many engine faults within FAULT_WINDOW_S mark the engine unhealthy (/health says so).
MAX_FAULTS_IN_WINDOW = 3
FAULT_WINDOW_S = 60.0
IDLE_WAIT_S = 0.05  # how long the loop sleeps when it has nothing it can schedule


class EngineDeadError(RuntimeError):
    """The step loop failed; the request cannot complete."""


class RequestFailedError(RuntimeError):
    """This request alone failed inside the engine; the message is meant for the user."""


@dataclass(slots=True)
class EngineHealth:
    ok: bool
    num_faults: int
    last_fault: str | None


@dataclass(slots=True, frozen=True)
class KvFootprint:
    """What the KV pool costs right now: the slots live requests hold without KV in them (paged
    allocation's waste), and the pool's memory beside the weights'."""

    allocated_slots: int  # token slots of the blocks live requests reference
    unfilled_slots: int  # of those, slots that hold no token's KV yet
    kv_bytes: int  # the KV pool, every layer
    weight_bytes: int  # the model's parameters and buffers

    @property
    def waste_perc(self) -> float:
        return self.unfilled_slots / self.allocated_slots if self.allocated_slots else 0.0

    @property
    def memory_share(self) -> float:
        """The KV pool's share of the engine's memory (weights + KV pool)."""
        total = self.kv_bytes + self.weight_bytes
        return self.kv_bytes / total if total else 0.0


@dataclass(slots=True)
class _Stream:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue


@dataclass(slots=True)
class _Add:
    request_id: str
    prompt: str | list[int]
    params: SamplingParams
    salt: str
    public_prefix_len: int
    pin: bool
    group: str | None
    weight: float
    deadline: float | None
    chunks: ChunkSpec | None = None


class AsyncEngine:
    def __init__(self, engine: LLMEngine) -> None:
        self.engine = engine
        self.lock = threading.Lock()
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._streams: dict[str, _Stream] = {}
        self._thread: threading.Thread | None = None
        self._go: threading.Event | None = None  # set by start() when from_config made the thread
        self._started = False
        self._snapshot: EngineStats = engine.stats()  # refreshed by the loop, read without the lock
        self._fault_times: deque[float] = deque(maxlen=MAX_FAULTS_IN_WINDOW)
        self.num_faults = 0
        self.last_fault: str | None = None

    @classmethod
    def from_config(cls, config: EngineConfig | None = None) -> AsyncEngine:
        """Load the model on the thread that will run the step loop, and return once it is loaded.

        torch's OpenMP runtime keeps a team of worker threads for each thread that has run a parallel
        region. A model loaded on one thread and stepped on another leaves two teams on the cores;
        on a small CPU they stop spinning between regions and every op pays a wake-up (measured on 2
        cores: a one-stream decode step 28.5 ms on the loading thread, 49 ms on another).
        """
        loaded: queue.SimpleQueue = queue.SimpleQueue()
        go = threading.Event()
        thread = threading.Thread(target=cls._load_then_run, args=(config, loaded, go),
                                  name="engine-step-loop", daemon=True)
        thread.start()
        result = loaded.get()
        if isinstance(result, BaseException):
            thread.join()
            raise result
        result._thread, result._go = thread, go
        return result

    @classmethod
    def _load_then_run(cls, config: EngineConfig | None, loaded: queue.SimpleQueue,
                       go: threading.Event) -> None:
        try:
            self = cls(LLMEngine(config))
        except BaseException as exc:  # handed to from_config's caller, raised there
            loaded.put(exc)
            return
        loaded.put(self)
        go.wait()
        if not self._stop.is_set():
            self._run()

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self._started = True
        if self._go is not None:
            self._go.set()
        elif self._thread is None:
            self._thread = threading.Thread(target=self._run, name="engine-step-loop", daemon=True)
            self._thread.start()

    def shutdown(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._go is not None:
            self._go.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def is_running(self) -> bool:
        return self._started and self._thread is not None and self._thread.is_alive()

    def health(self) -> EngineHealth:
        """Unhealthy when the loop is gone or faults keep repeating."""
        now = time.monotonic()
        recent = sum(1 for t in self._fault_times if now - t < FAULT_WINDOW_S)
        ok = self.is_running and recent < MAX_FAULTS_IN_WINDOW
        return EngineHealth(ok, self.num_faults, self.last_fault)

    # --- what callers may read ---------------------------------------------------------------
    @property
    def tokenizer(self):
        return self.engine.tokenizer

    @property
    def model_name(self) -> str:
        return self.engine.model_name

    @property
    def context_limit(self) -> int:
        return self.engine.context_limit

    @property
    def block_size(self) -> int:
        return self.engine.config.block_size

    # --- requests ----------------------------------------------------------------------------

    def validate(self, request_id: str, prompt_ids: list[int], params: SamplingParams) -> None:
        """Raise InvalidRequestError now, on the caller's side, for a request that cannot run."""
        self.engine.validate(request_id + "\x00new", prompt_ids, params)

    async def generate(self, request_id: str, prompt: str | list[int], params: SamplingParams,
                       salt: str = "", public_prefix_len: int = 0, pin: bool = False, *,
                       group: str | None = None, weight: float = 1.0,
                       deadline: float | None = None,
                       chunks: ChunkSpec | None = None) -> AsyncIterator[RequestOutput]:
        """Stream a request's outputs; leaving the iteration early aborts it and frees its blocks.

        `group`/`weight`: its fair share (default group: the salt). Past `deadline` (time.monotonic())
        the last item has finish_reason "timeout". `chunks`: the prompt's retrieved chunks and whether
        their stored KV may be reused (engine/chunk_kv.py). A failure of this request alone raises
        RequestFailedError; an engine fault raises EngineDeadError."""
        stream = _Stream(asyncio.get_running_loop(), asyncio.Queue())
        if request_id in self._streams:
            raise ValueError(f"request id {request_id!r} is already in flight")
        self._streams[request_id] = stream
        self._send(_Add(request_id, prompt, params, salt, public_prefix_len, pin, group, weight, deadline,
                        chunks))
        finished = False
        try:
            while not finished:
                item = await stream.queue.get()
                if isinstance(item, BaseException):
                    raise item
                finished = item.finished
                if item.finish_reason == "error":
                    raise RequestFailedError(item.error or "the request failed in the engine")
                yield item
        finally:
            if not finished:
                self.abort(request_id)
            self._streams.pop(request_id, None)

    def abort(self, request_id: str) -> None:
        self._send(("abort", request_id))

    def _send(self, command: tuple) -> None:
        self._commands.put(command)
        self._wake.set()

    # --- state -------------------------------------------------------------------------------
    def stats(self) -> EngineStats:
        """The snapshot taken after the latest step or command: never waits for a running step."""
        if not self.is_running:
            self._refresh()
        return self._snapshot

    def kv_footprint(self) -> KvFootprint:
        """Read between steps (under the lock, so it may wait for one): blocks match their tokens then."""
        with self.lock:
            engine = self.engine
            bm, runner = engine.block_manager, engine.runner
            unfilled = bm.num_unfilled_slots(engine.scheduler.running)
            tensors = [t for layer in runner.kv_caches for t in layer]
            weights = [*runner.model.parameters(), *runner.model.buffers()]
            return KvFootprint(bm.num_live_blocks * bm.block_size, unfilled,
                               sum(t.nbytes for t in tensors), sum(t.nbytes for t in weights))

    def has_chunk(self, salt: str, token_ids: list[int]) -> bool:
        """Whether a chunk of these tokens is stored under `salt` (kv_reuse "chunks")."""
        with self.lock:
            return self.engine.block_manager.lookup_chunk(salt, token_ids) is not None

    def num_cached_tokens(self, token_ids: list[int], salt: str = "", public_prefix_len: int = 0,
                          blocking: bool = True) -> int | None:
        """Leading tokens of a prompt whose KV the prefix cache holds now (whole blocks); None when
        not `blocking` and the engine is in the middle of a step (it holds the lock for the step)."""
        probe = Sequence("probe", list(token_ids), len(token_ids), SamplingParams(max_tokens=1), salt=salt,
                         public_prefix_len=public_prefix_len)
        if not self.lock.acquire(blocking=blocking):
            return None
        try:
            return len(self.engine.block_manager.lookup_prefix(probe)) * self.engine.config.block_size
        finally:
            self.lock.release()

    def pin_chunk(self, salt: str, token_ids: list[int]) -> int:
        """Pin a stored chunk until unpin_all; returns blocks newly pinned (0: not stored)."""
        with self.lock:
            num = self.engine.pin_chunk(salt, token_ids)
            self._snapshot = self.engine.stats()
        return num

    def flush_prefix_cache(self, salt: str | None = None) -> int:
        """Drop unreferenced cached KV (only `salt`'s when given); blocks the caller's thread."""
        with self.lock:
            num = self.engine.flush_prefix_cache(salt)
            self._snapshot = self.engine.stats()
        return num

    def erase_salt(self, salt: str) -> int:
        """Drop all cached KV under `salt`, pinned included (tenant deletion); blocks the caller."""
        with self.lock:
            num = self.engine.erase_salt(salt)
            self._snapshot = self.engine.stats()
        return num

    def unpin_all(self) -> int:
        with self.lock:
            num = self.engine.unpin_all()
            self._snapshot = self.engine.stats()
        return num

    def _refresh(self) -> None:
        with self.lock:
            self._snapshot = self.engine.stats()

    async def pin_prefix(self, request_id: str, prompt: str | list[int], salt: str = "",
                         public: bool = False) -> int:
        """Compute a prefix once (a 1-token request) and pin its full blocks; returns tokens pinned."""
        params = SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True)
        ids = self.engine.tokenize(prompt)
        async for _ in self.generate(request_id, ids, params, salt, len(ids) if public else 0, pin=True):
            pass
        return (len(ids) // self.block_size) * self.block_size

    async def get_stats(self) -> EngineStats:
        return await asyncio.to_thread(self.stats)

    # --- the loop (engine thread) -------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            self._drain_commands()
            if not self.engine.has_unfinished():
                self._refresh()
                self._idle()
                continue
            steps = self.engine.num_steps
            try:
                with self.lock:
                    outputs = self.engine.step()
                    self._snapshot = self.engine.stats()
            except Exception as exc:  # keep serving: fail the live requests, not the process
                log.exception("engine step failed")
                self._fault(exc)
                continue
            self._dispatch(outputs)
            if self.engine.num_steps == steps and not outputs:
                self._idle()  # work that cannot be scheduled now: wait for a change, do not spin
        self._fail_all(EngineDeadError("engine is shutting down"))

    def _idle(self) -> None:
        self._wake.wait(IDLE_WAIT_S)
        self._wake.clear()

    def _fault(self, exc: Exception) -> None:
        """An engine fault: end every live request, drop the cached KV, count it for health()."""
        self.num_faults += 1
        self.last_fault = f"{type(exc).__name__}: {exc}"
        self._fault_times.append(time.monotonic())
        self._fail_all(EngineDeadError(f"engine step failed: {exc}"))

    def _drain_commands(self) -> None:
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            if isinstance(command, _Add):
                self._add(command)
            else:
                with self.lock:
                    out = self.engine.abort(command[1])
                if out is not None:
                    self._dispatch([out])

    def _add(self, cmd: _Add) -> None:
        if cmd.request_id not in self._streams:
            return  # the caller gave up before the request reached the engine
        try:
            with self.lock:
                self.engine.add_request(cmd.request_id, cmd.prompt, cmd.params, cmd.salt,
                                        cmd.public_prefix_len, cmd.pin, group=cmd.group,
                                        weight=cmd.weight, deadline=cmd.deadline, chunks=cmd.chunks)
        except Exception as exc:
            self._deliver(cmd.request_id, exc)

    def _dispatch(self, outputs: list[RequestOutput]) -> None:
        for out in outputs:
            self._deliver(out.request_id, out)

    def _deliver(self, request_id: str, item) -> None:
        stream = self._streams.get(request_id)
        if stream is not None and not stream.loop.is_closed():
            stream.loop.call_soon_threadsafe(stream.queue.put_nowait, item)

    def _fail_all(self, exc: Exception) -> None:
        with self.lock:
            self.engine.reset_after_fault()
            self._snapshot = self.engine.stats()
        for request_id in list(self._streams):
            self._deliver(request_id, exc)
