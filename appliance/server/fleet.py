"""The model versions in memory, and the moves between them: add, canary, promote, roll back, retire.

Each loaded version has its own engine and KV pool, so no KV crosses versions. They share one memory
budget (`model_memory_gib`; 0 = 80% of the machine's memory): a new version's need (its weights,
estimated from the checkpoint's metadata before anything is read, plus its KV pool) must fit in what
the resident versions leave, or the version is refused before loading. Its KV pool is
`kv_cache_gib`, or what the budget leaves when that is less (down to a quarter of it).

Moves happen on the event loop, between requests: a request is routed once, when it starts, and
holds its version until it ends, so a promote or rollback cuts no stream; a version leaves memory
only when its last request has finished. The previous live version stays loaded for
`model_rollback_grace_s` after a promote, so a rollback is a switch, not a load. The registry
(SQLite) keeps the states and every move with who asked, so a restart comes back with the same live
and canary versions.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from appliance.server.config import ServerConfig
from appliance.server.errors import ApiError, bad_request, not_found
from appliance.server.model_registry import ModelRegistry, ModelVersion
from appliance.server.model_routing import Route, RouteRequest, Rule, Split, choose, parse_rules
from appliance.server.store import StoreError, utc_now
from appliance.server.version_stats import VersionMetrics

if TYPE_CHECKING:  # the engine (torch) loads with the model, not with the server's modules
    from engine import AsyncEngine
    from engine.checkpoint_info import CheckpointInfo

log = logging.getLogger(__name__)
GIB = 1 << 30
AUTO_BUDGET_SHARE = 0.8
MIN_KV_SHARE = 0.25  # a version whose KV pool would be below this share of kv_cache_gib is refused
SERVING_STATES = ("live", "canary", "ready")  # loaded versions that requests may be routed to


@dataclass(slots=True)
class Resident:
    """A loaded version: its engine and what requests are using it."""

    name: str
    engine: AsyncEngine
    tokenizer_key: str  # versions loaded from one checkpoint tokenize alike
    memory_bytes: int  # weights + KV pool
    num_inflight: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def context_limit(self) -> int:
        return self.engine.context_limit


class Fleet:
    def __init__(self, config: ServerConfig, registry: ModelRegistry, metrics: VersionMetrics) -> None:
        self.config = config
        self.registry = registry
        self.metrics = metrics
        self.residents: dict[str, Resident] = {}
        self.versions: dict[str, ModelVersion] = {}  # the registry's rows, as the event loop sees them
        self.rules: list[Rule] = []
        self.access: dict[str, list[str]] = {}  # tenant -> the versions it may use (absent: all)
        self.reserved: dict[str, int] = {}  # bytes promised to versions still loading
        self.previous_live: str | None = None  # kept loaded for a rollback until its grace ends
        self.alias = ""  # the model name clients send to be routed (the first live version's model)
        self.auto_rollbacks: dict[str, int] = {}  # canary -> times the guard rolled it back (alerts)
        self._tasks: set[asyncio.Task] = set()

    # --- start and stop ----------------------------------------------------------------------
    async def start(self) -> None:
        """Load the live version (the registry's, else the configured model as a first version), then
        bring back the canary and a version kept for rollback in the background."""
        rows = await asyncio.to_thread(self.registry.list)
        self.versions = {v.name: v for v in rows}
        rules, self.access = await asyncio.to_thread(self.registry.routing)
        self.rules = parse_rules(rules)
        live = self.live_version()
        if live is None:
            live = await self._register_configured()
        elif (self.config.model or "") != live.source:
            log.warning("serving live version %s (%s) from the registry, not the configured model %s",
                        live.name, live.source or "bundled", self.config.model or "bundled")
        resident = await self._load(live, self.config.kv_cache_gib)
        self.alias = resident.engine.model_name
        self.residents[live.name] = resident
        for version in list(self.versions.values()):
            if version.name != live.name:
                await self._restore(version)

    async def _register_configured(self) -> ModelVersion:
        cfg = self.config
        version = ModelVersion(cfg.model_version, cfg.model or "", cfg.quantization, cfg.dtype, "live",
                               utc_now(), "the model the server was started with")
        await asyncio.to_thread(self.registry.add, version)
        await self._log("add", version.name, reason="first start")
        self.versions[version.name] = version
        return version

    async def _restore(self, version: ModelVersion) -> None:
        if version.state == "ready" and version.retire_at is not None and version.retire_at <= time.time():
            await self._set_state(version, "retired")
        elif version.state in ("canary", "ready", "loading"):
            if version.state == "ready" and version.retire_at is not None:
                self.previous_live = version.name
            self._spawn(self._load_in_background(version, None, reason="restart"))

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for resident in list(self.residents.values()):
            await asyncio.to_thread(resident.engine.shutdown)
        self.residents.clear()

    # --- reading -----------------------------------------------------------------------------
    def live_version(self) -> ModelVersion | None:
        return next((v for v in self.versions.values() if v.state == "live"), None)

    def canary_version(self) -> ModelVersion | None:
        return next((v for v in self.versions.values() if v.state == "canary"), None)

    @property
    def live(self) -> Resident | None:
        version = self.live_version()
        return self.residents.get(version.name) if version is not None else None

    def budget_bytes(self) -> int:
        if self.config.model_memory_gib > 0:
            return int(self.config.model_memory_gib * GIB)
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * AUTO_BUDGET_SHARE)

    def used_bytes(self) -> int:
        return sum(r.memory_bytes for r in self.residents.values()) + sum(self.reserved.values())

    def allowed(self, tenant: str) -> set[str]:
        """Loaded versions that take traffic and that the tenant may use."""
        names = {n for n in self.residents if self.versions[n].state in SERVING_STATES}
        permitted = self.access.get(tenant)
        return names if permitted is None else names & set(permitted)

    # --- routing -----------------------------------------------------------------------------
    def route(self, req: RouteRequest, requested: str | None) -> tuple[Resident, Route]:
        """The version for a request; `requested`: a version named by the request (not the alias)."""
        allowed = self.allowed(req.tenant)
        if requested is not None:
            if requested not in allowed:
                raise self._not_usable(requested, req.tenant)
            return self.residents[requested], Route(requested, "model")
        route = choose(self.rules, self._split(), req, allowed)
        if route.version not in allowed:
            if not allowed:
                raise ApiError(403, f"tenant {req.tenant!r} may use no loaded model version", "model",
                               "model_not_permitted")
            route = Route(sorted(allowed)[0], "permitted")
        return self.residents[route.version], route

    def needs_prompt_length(self) -> bool:
        return any(rule.needs_prompt_length for rule in self.rules)

    def _split(self) -> Split:
        live, canary = self.live_version(), self.canary_version()
        assert live is not None, "a serving fleet always has a live version"
        if canary is None:
            return Split(live.name)
        return Split(live.name, canary.name, canary.canary_share, frozenset(canary.canary_tenants))

    def _not_usable(self, name: str, tenant: str) -> ApiError:
        version = self.versions.get(name)
        if version is None or version.state not in SERVING_STATES or name not in self.residents:
            return ApiError(404, f"The model '{name}' does not exist or is not loaded", "model",
                            "model_not_found")
        return ApiError(403, f"tenant {tenant!r} may not use model version {name!r}", "model",
                        "model_not_permitted")

    @staticmethod
    def acquire(resident: Resident) -> None:
        """A request routed to `resident` starts: the version stays loaded until release()."""
        resident.num_inflight += 1
        resident.idle.clear()

    @staticmethod
    def release(resident: Resident) -> None:
        resident.num_inflight -= 1
        assert resident.num_inflight >= 0, "a version released more often than acquired"
        if resident.num_inflight == 0:
            resident.idle.set()

    def abort_everywhere(self, request_id: str) -> None:
        for resident in self.residents.values():
            resident.engine.abort(request_id)

    # --- adding a version --------------------------------------------------------------------
    async def add(self, name: str, source: str, quantization: str, dtype: str, notes: str,
                  actor: str | None) -> ModelVersion:
        """Check the checkpoint and the memory, register the version, and load it in the background."""
        from engine import CheckpointError
        from engine.checkpoint_info import inspect_checkpoint

        existing = self.versions.get(name)
        if existing is not None and existing.state not in ("retired", "failed"):
            raise bad_request(f"model version {name!r} already exists ({existing.state})", "name",
                              "duplicate")
        try:
            info = await asyncio.to_thread(inspect_checkpoint, source or None, quantization)
        except CheckpointError as exc:
            raise bad_request(f"cannot use {source or 'the bundled model'}: {exc}", "source",
                              "model_unusable") from None
        need = self._need_bytes(info, dtype)
        kv_gib = self._kv_room(info, dtype, need)
        version = ModelVersion(name, source, info.quantization, dtype, "loading", utc_now(), notes)
        try:
            await asyncio.to_thread(self.registry.add, version)
        except StoreError as exc:
            raise bad_request(str(exc), exc.param or "name", "invalid_value") from None
        self.versions[name] = version
        self.metrics.reset(name)
        self.reserved[name] = need + int(kv_gib * GIB)
        await self._log("add", name, actor=actor, reason=notes or None)
        self._spawn(self._load_in_background(version, kv_gib, reason=None))
        return version

    def _need_bytes(self, info: CheckpointInfo, dtype: str) -> int:
        from engine.model_runner import resolve_device, resolve_dtype

        device = resolve_device(self.config.device)
        return info.weight_bytes(resolve_dtype(dtype, device).itemsize)

    def _kv_room(self, info: CheckpointInfo, dtype: str, weight_bytes: int) -> float:
        """The KV pool (GiB) the new version gets, or a 400 saying why it does not fit."""
        left = self.budget_bytes() - self.used_bytes() - weight_bytes
        want = self.config.kv_cache_gib
        kv_gib = min(want, left / GIB)
        if kv_gib < want * MIN_KV_SHARE:
            raise bad_request(
                f"model {info.config.name!r} does not fit in memory: its weights need about "
                f"{weight_bytes / GIB:.2f} GiB and its KV pool at least {want * MIN_KV_SHARE:.2f} GiB, "
                f"but {max(0, self.budget_bytes() - self.used_bytes()) / GIB:.2f} GiB of the "
                f"{self.budget_bytes() / GIB:.2f} GiB model memory budget is left "
                f"(loaded: {', '.join(sorted(self.residents)) or 'none'})", "source", "model_too_large")
        return kv_gib

    async def _load_in_background(self, version: ModelVersion, kv_gib: float | None,
                                  reason: str | None) -> None:
        try:
            resident = await self._load(version, kv_gib or self.config.kv_cache_gib)
        except Exception as exc:  # any failure to load leaves the version failed, the rest serving
            message = " ".join(str(exc).split()) or type(exc).__name__
            log.warning("model version %s failed to load: %s", version.name, message)
            version.error = message
            await self._set_state(version, "failed")
            await self._log("failed", version.name, reason=message)
            return
        finally:
            self.reserved.pop(version.name, None)
        self.residents[version.name] = resident
        if version.state == "loading":
            await self._set_state(version, "ready")
        await self._log("loaded", version.name, reason=reason)

    async def _load(self, version: ModelVersion, kv_gib: float) -> Resident:
        from engine import AsyncEngine, EngineConfig
        from engine.checkpoint_info import locate_checkpoint, weights_sha256

        cfg = self.config
        engine_config = EngineConfig(model=version.source or None, device=cfg.device, dtype=version.dtype,
                                     quantization=version.quantization, kv_cache_gib=kv_gib,
                                     max_num_seqs=cfg.max_num_seqs,
                                     max_num_batched_tokens=cfg.max_num_batched_tokens,
                                     chunk_recompute_tokens=cfg.chunk_recompute_tokens)
        path, fmt = locate_checkpoint(version.source or None)  # no metadata read: that takes seconds
        if version.weights_sha256 is None:
            version.weights_sha256 = await asyncio.to_thread(weights_sha256, path, fmt)
        engine = await asyncio.to_thread(AsyncEngine.from_config, engine_config)
        engine.start()
        footprint = await asyncio.to_thread(engine.kv_footprint)
        resident = Resident(version.name, engine, path, footprint.kv_bytes + footprint.weight_bytes)
        resident.idle.set()
        await asyncio.to_thread(self.registry.save, version)
        return resident

    # --- moves -------------------------------------------------------------------------------
    async def set_canary(self, name: str, share: float, tenants: list[str], goal: dict[str, float],
                         actor: str | None) -> ModelVersion:
        version = self._need(name)
        if version.state not in ("ready", "canary") or name not in self.residents:
            raise bad_request(f"version {name!r} is {version.state}; only a loaded, ready version can "
                              "be the canary", "name", "invalid_state")
        current = self.canary_version()
        if current is not None and current.name != name:
            raise bad_request(f"version {current.name!r} is the canary already; promote or roll it back "
                              "first", "name", "invalid_state")
        version.canary_share, version.canary_tenants, version.objective = share, tenants, goal
        await self._set_state(version, "canary")
        await self._log("canary", name, actor=actor,
                        reason=f"share {share:g}" + (f", tenants {', '.join(tenants)}" if tenants else ""))
        return version

    async def promote(self, name: str | None, actor: str | None) -> ModelVersion:
        """The canary (or the named loaded version) becomes live; the old live one stays loaded for
        the rollback grace period."""
        version = self._need(name) if name else self.canary_version()
        if version is None:
            raise bad_request("there is no canary to promote; name a version", "name", "invalid_state")
        if version.state not in ("ready", "canary") or version.name not in self.residents:
            raise bad_request(f"version {version.name!r} is {version.state}; only a loaded version can be "
                              "promoted", "name", "invalid_state")
        old = self.live_version()
        assert old is not None
        await self._switch_live(old, version, keep_old=True)
        await self._log("promote", version.name, old.name, actor)
        return version

    async def rollback(self, actor: str | None, reason: str | None = None,
                       action: str = "rollback") -> ModelVersion:
        """Send traffic back: a running canary is retired; else the previous live version (still
        loaded) becomes live again and the one promoted over it is retired. Returns the retired one."""
        canary = self.canary_version()
        if canary is not None:
            if action == "auto_rollback":
                self.auto_rollbacks[canary.name] = self.auto_rollbacks.get(canary.name, 0) + 1
            await self._retire(canary)
            await self._log(action, canary.name, None, actor, reason)
            return canary
        previous = self.versions.get(self.previous_live or "")
        if previous is None or previous.state != "ready" or previous.name not in self.residents:
            raise bad_request("nothing to roll back: no canary, and no previous live version is loaded "
                              "(its grace period may have ended)", None, "invalid_state")
        current = self.live_version()
        assert current is not None
        await self._switch_live(current, previous, keep_old=False)
        await self._log(action, previous.name, current.name, actor, reason)
        return current

    async def retire(self, name: str, actor: str | None) -> ModelVersion:
        version = self._need(name)
        if version.state == "live":
            raise bad_request("the live version cannot be retired; promote another version first", "name",
                              "invalid_state")
        if version.state in ("retired", "failed", "loading"):
            raise bad_request(f"version {name!r} is {version.state}", "name", "invalid_state")
        await self._retire(version)
        await self._log("retire", name, actor=actor)
        return version

    async def _switch_live(self, old: ModelVersion, new: ModelVersion, keep_old: bool) -> None:
        new.canary_share, new.canary_tenants, new.retire_at, new.objective = 0.0, [], None, {}
        await self._set_state(new, "live")
        if keep_old:
            old.retire_at = time.time() + self.config.model_rollback_grace_s
            await self._set_state(old, "ready")
            self.previous_live = old.name
            self._spawn(self._retire_after_grace(old))
        else:
            self.previous_live = None
            await self._retire(old)

    async def _retire_after_grace(self, version: ModelVersion) -> None:
        await asyncio.sleep(self.config.model_rollback_grace_s)
        if version.state == "ready" and self.previous_live == version.name:
            self.previous_live = None
            await self._retire(version)
            await self._log("retire", version.name, reason="rollback grace period ended")

    async def _retire(self, version: ModelVersion) -> None:
        """No new requests from now; the engine stops once the version's last request has ended."""
        version.canary_share, version.canary_tenants, version.retire_at = 0.0, [], None
        version.objective = {}
        await self._set_state(version, "retired")
        resident = self.residents.get(version.name)
        if resident is not None:
            self._spawn(self._unload(resident))

    async def _unload(self, resident: Resident) -> None:
        await resident.idle.wait()
        # The name may have been added again meanwhile: only this engine leaves.
        if self.versions[resident.name].state == "retired" and self.residents.get(resident.name) is resident:
            del self.residents[resident.name]
            await asyncio.to_thread(resident.engine.shutdown)

    # --- bookkeeping -------------------------------------------------------------------------
    def _need(self, name: str) -> ModelVersion:
        version = self.versions.get(name)
        if version is None:
            raise not_found(f"model version {name!r} does not exist", "name")
        return version

    async def _set_state(self, version: ModelVersion, state: str) -> None:
        version.state = state
        await asyncio.to_thread(self.registry.save, version)

    async def _log(self, action: str, version: str, previous: str | None = None, actor: str | None = None,
                   reason: str | None = None) -> None:
        await asyncio.to_thread(self.registry.log, action, version, previous, actor, reason)

    async def set_rules(self, rules: list[Rule], actor: str | None) -> None:
        await asyncio.to_thread(self.registry.set_routing, [r.to_dict() for r in rules], self.access)
        self.rules = rules
        await self._log("rules", ",".join(r.name for r in rules) or "-", actor=actor)

    async def set_access(self, tenant: str, versions: list[str] | None, actor: str | None) -> None:
        access = {**self.access}
        if versions is None:
            access.pop(tenant, None)
        else:
            access[tenant] = versions
        rules = [r.to_dict() for r in self.rules]
        await asyncio.to_thread(self.registry.set_routing, rules, access)
        self.access = access
        await self._log("access", tenant, actor=actor, reason=",".join(versions) if versions else "all")

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
