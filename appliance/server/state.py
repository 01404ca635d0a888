"""What the handlers share: the app-wide state and the per-request context."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web

from appliance.server.admission import Admission
from appliance.server.alerts import AlertEngine
from appliance.server.config import ServerConfig
from appliance.server.control import ControlPlane
from appliance.server.cost import CostLedger, Prices
from appliance.server.errors import ApiError, unavailable
from appliance.server.fleet import Fleet, Resident
from appliance.server.limits import TenantLimits
from appliance.server.metrics import ServerMetrics
from appliance.server.store import ControlStore, Principal, Tenant
from appliance.server.tracing import NO_TRACE, RequestTrace, Tracing
from appliance.server.version_stats import VersionMetrics

if TYPE_CHECKING:
    from engine import AsyncEngine
    from rag import RagService

RETRY_AFTER_LOADING_S = 5


@dataclass(slots=True)
class AppState:
    config: ServerConfig
    store: ControlStore  # blocking calls: from worker threads only (see control)
    control: ControlPlane
    metrics: ServerMetrics
    admission: Admission
    limits: TenantLimits
    tracing: Tracing
    fleet: Fleet | None = None  # the model versions, once the live one is loaded
    rag: RagService | None = None
    load_error: str | None = None
    started_at: float = field(default_factory=time.time)
    alerts: AlertEngine = field(init=False)  # from the config's objectives and alert settings
    cost: CostLedger = field(init=False)  # from the config's prices
    version_metrics: VersionMetrics = field(init=False)  # per model version (the canary guard reads it)

    def __post_init__(self) -> None:
        self.alerts = AlertEngine.from_config(self.config)
        self.cost = CostLedger(Prices.from_config(self.config))
        self.version_metrics = VersionMetrics(self.config.canary_window_s)

    @property
    def engine(self) -> AsyncEngine | None:
        """The live version's engine (the server-wide stats, alerts and cache actions read it)."""
        live = self.fleet.live if self.fleet is not None else None
        return live.engine if live is not None else None

    @property
    def engines(self) -> list[AsyncEngine]:
        """Every loaded version's engine (cache flushes and tenant erasure reach them all)."""
        return [r.engine for r in self.fleet.residents.values()] if self.fleet is not None else []

    @property
    def model_name(self) -> str:
        """The name clients send to be routed across versions."""
        return self.fleet.alias if self.fleet is not None else ""

    @classmethod
    def create(cls, config: ServerConfig, store: ControlStore) -> AppState:
        control = ControlPlane(store)
        admission = Admission(config.max_queued_requests, config.max_queued_tokens,
                              config.max_upload_inflight_bytes)
        return cls(config, store, control, ServerMetrics(), admission, TenantLimits(control.usage),
                   Tracing(config.tracing, config.otlp_endpoint))

    @property
    def is_loaded(self) -> bool:
        return self.engine is not None and self.rag is not None

    @property
    def is_ready(self) -> bool:
        return self.is_loaded and not self.admission.is_draining

    def need_engine(self) -> AsyncEngine:
        engine = self.engine
        if engine is None:
            raise unavailable("the model is still loading", RETRY_AFTER_LOADING_S, "model_loading")
        return engine

    def need_fleet(self) -> Fleet:
        if self.fleet is None or self.fleet.live is None:
            raise unavailable("the model is still loading", RETRY_AFTER_LOADING_S, "model_loading")
        return self.fleet

    def need_rag(self) -> RagService:
        if self.rag is None:
            raise unavailable("the retrieval service is still loading", RETRY_AFTER_LOADING_S,
                              "model_loading")
        return self.rag


@dataclass(slots=True)
class RequestContext:
    """Filled while a request is handled; the gateway writes it to the audit log at the end."""

    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    started: float = field(default_factory=time.monotonic)
    principal: Principal | None = None
    tenant_row: Tenant | None = None  # the principal's tenant as read at authentication
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    counts_usage: bool = False  # the request reached the engine: its tokens go to the tenant's usage
    error_code: str | None = None
    prompt: str | None = None
    client_gone: bool = False
    # The server ended the generation early but kept what was made (the daily quota ran out): the
    # response finishes normally ("length") and a stream adds this error as its last event.
    cutoff: ApiError | None = None
    trace: RequestTrace = NO_TRACE  # the request's spans (see tracing)
    version: Resident | None = None  # the model version the request was routed to (held until it ends)
    ttft_s: float | None = None
    tpot_s: float | None = None
    stream_error_status: int | None = None  # the status of an error sent inside a 200 stream
    audit_detail: dict | None = None  # what an operation changed, for its audit row's `detail`

    @property
    def tenant(self) -> str | None:
        return self.principal.tenant if self.principal else None

    def version_headers(self) -> dict[str, str]:
        """Which model version answered (X-Model-Version), for clients comparing live and canary."""
        return {"X-Model-Version": self.version.name} if self.version is not None else {}


STATE = web.AppKey("state", AppState)
CTX = "appliance.ctx"


def state_of(request: web.Request) -> AppState:
    return request.app[STATE]


def ctx_of(request: web.Request) -> RequestContext:
    return request[CTX]


def principal_of(request: web.Request) -> Principal:
    principal = ctx_of(request).principal
    assert principal is not None, "route is public but the handler needs a principal"
    return principal
