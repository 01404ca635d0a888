"""Server settings: defaults < TOML file < `APPLIANCE_*` environment < command-line flags.

Every field of ServerConfig can be set in all three places; the env name is the field name upper-cased
with an `APPLIANCE_` prefix (`max_queued_requests` -> `APPLIANCE_MAX_QUEUED_REQUESTS`).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

ENV_PREFIX = "APPLIANCE_"


class ConfigError(ValueError):
    """A setting that cannot be used; the message names it."""


@dataclass(slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: str = "./data"
    model: str | None = None          # GGUF file or HF dir; None = the bundled SmolLM2
    device: str = "auto"
    dtype: str = "auto"
    quantization: str = "none"        # weights: none | auto (what the checkpoint carries) | int8 | int4
    qdrant_url: str | None = None     # None = embedded Qdrant Edge under data_dir
    # Model versions (see appliance/server/fleet.py): the name the configured model gets on a first
    # start; the memory all loaded versions share (weights + KV pools; 0 = 80% of the machine's);
    # how long a replaced live version stays loaded for a rollback.
    model_version: str = "v1"
    model_memory_gib: float = 0.0
    model_rollback_grace_s: float = 600.0
    # The canary's objective over a sliding window (0 turns a bound off): broken, it is rolled back.
    canary_window_s: float = 60.0
    canary_min_requests: int = 20
    canary_max_error_rate: float = 0.05
    canary_max_ttft_p90_s: float = 0.0
    canary_check_interval_s: float = 2.0
    kv_cache_gib: float = 1.0
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048
    # Backpressure: requests admitted but not yet producing tokens. Beyond either bound: 503.
    max_queued_requests: int = 256
    max_queued_tokens: int = 262144
    default_max_tokens: int = 256     # when a request names no max_tokens
    max_body_bytes: int = 4 * 1024 * 1024
    max_upload_bytes: int = 64 * 1024 * 1024
    max_upload_inflight_bytes: int = 256 * 1024 * 1024  # uploads held at once; beyond: 503
    ingest_timeout_s: float = 600.0   # embedding + indexing of one upload request; beyond: 504
    request_timeout_s: float = 600.0  # a generation request's server-side deadline; beyond: 504
    drain_timeout_s: float = 30.0
    log_prompts: bool = False         # store prompts in the audit log (off: never)
    tracing: bool = True              # a trace per /v1 request: X-Trace-Id, GET /admin/traces
    otlp_endpoint: str | None = None  # also export the spans to this OTLP/HTTP traces URL
    admin_key: str | None = None      # bootstraps an admin key (APPLIANCE_ADMIN_KEY)
    tls_cert: str | None = None       # PEM certificate (chain): serve HTTPS; needs tls_key too
    tls_key: str | None = None        # PEM private key of tls_cert
    rag_top_k: int = 3  # chunks in a RAG prompt; 3 gave the bundled 135M model its best answers
    # RAG answers' KV reuse (a request's `kv_reuse` overrides): "prefix" (exact prefixes only) or
    # "chunks" (stored chunk KV moved to any position; approximate, see engine/chunk_kv.py).
    rag_kv_reuse: str = "prefix"
    chunk_recompute_tokens: int = 16  # "chunks": a reused chunk's first tokens computed again
    rag_system_prompt: str = (
        "You are a helpful assistant. Answer the question using only the numbered context passages. "
        "Cite the passages you use with their labels, like [1]. If the context does not contain the "
        "answer, say that you do not know."
    )
    # Limits of tenants created without explicit ones (None = unlimited).
    default_token_quota_per_day: int | None = None
    default_requests_per_minute: int | None = None
    # Per-tenant isolation for tenants without their own limits (the admin tenant: only its own).
    default_max_concurrent_requests: int = 16
    default_max_queued_tokens_per_tenant: int = 65536
    # Objectives and alerts (see appliance/server/slo.py and alerts.py): a request is good when its
    # time to first token (queue wait) is at most the threshold, a histogram bucket bound; the target
    # is the share of requests that must be good. Burn windows, comma-separated: short/long:rate:severity.
    slo_ttft_s: float = 2.5
    slo_ttft_target: float = 0.95
    slo_queue_wait_s: float = 1.0
    slo_queue_wait_target: float = 0.95
    slo_availability_target: float = 0.99  # share of requests that must not end in a 5xx
    slo_burn_windows: str = "5m/1h:14.4:page,30m/6h:6:page,6h/3d:1:ticket"
    slo_min_requests: int = 10        # fewer requests in the long window: no burn-rate alert
    alert_interval_s: float = 5.0     # how often the rules are evaluated
    alert_window_s: float = 300.0     # the window of the preemption, queue, tenant and auth rules
    alert_preemptions_per_min: float = 1.0
    alert_queue_depth: int = 32       # a queue this deep that grew over the window
    alert_tenant_error_ratio: float = 0.5
    alert_tenant_min_errors: int = 10
    alert_auth_failures: int = 20     # 401/403 answers per tenant (unknown keys together) per window
    # Cost (see appliance/server/cost.py), in cost_currency: per 1k prompt tokens computed, per 1k
    # prompt tokens served from the prefix cache, per 1k generated tokens, per engine-second.
    price_per_1k_prompt_tokens: float = 0.0
    price_per_1k_cached_tokens: float = 0.0
    price_per_1k_generated_tokens: float = 0.0
    price_per_engine_second: float = 0.0
    cost_currency: str = "USD"

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    def validate(self) -> ServerConfig:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be in 0..65535, got {self.port}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.quantization not in ("auto", "none", "int8", "int4"):
            raise ConfigError(f"quantization must be auto, none, int8 or int4, got {self.quantization!r}")
        if self.rag_kv_reuse not in ("prefix", "chunks"):
            raise ConfigError(f"rag_kv_reuse must be prefix or chunks, got {self.rag_kv_reuse!r}")
        if self.chunk_recompute_tokens < 0:
            raise ConfigError("chunk_recompute_tokens must be >= 0")
        positive = ("kv_cache_gib", "max_num_seqs", "max_num_batched_tokens", "max_queued_requests",
                    "max_queued_tokens", "default_max_tokens", "max_body_bytes", "max_upload_bytes",
                    "rag_top_k", "max_upload_inflight_bytes", "ingest_timeout_s", "request_timeout_s",
                    "default_max_concurrent_requests", "default_max_queued_tokens_per_tenant")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_upload_inflight_bytes < self.max_upload_bytes:
            raise ConfigError("max_upload_inflight_bytes must be >= max_upload_bytes (one upload must fit)")
        for name in ("model_memory_gib", "model_rollback_grace_s", "canary_max_error_rate",
                     "canary_max_ttft_p90_s", "canary_min_requests"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        from appliance.server.store import valid_name

        if not valid_name(self.model_version):
            raise ConfigError(f"model_version must be a simple name (letters, digits, '.', '_', '-'), "
                              f"got {self.model_version!r}")
        if not (self.canary_window_s > 0 and self.canary_check_interval_s > 0):
            raise ConfigError("canary_window_s and canary_check_interval_s must be positive")
        if self.drain_timeout_s < 0:
            raise ConfigError("drain_timeout_s must be >= 0")
        if self.model is not None and not Path(self.model).exists():
            raise ConfigError(f"model path does not exist: {self.model}")
        if self.admin_key is not None and len(self.admin_key) < 16:
            raise ConfigError("APPLIANCE_ADMIN_KEY must be at least 16 characters")
        _check_alerting(self)
        if self.otlp_endpoint is not None:
            _check_otlp(self.otlp_endpoint)
        return self


def _check_otlp(endpoint: str) -> None:
    if not endpoint.startswith(("http://", "https://")):
        raise ConfigError(f"otlp_endpoint must be an http(s) URL, got {endpoint!r}")
    try:
        found = importlib.util.find_spec("opentelemetry.exporter.otlp.proto.http") is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        raise ConfigError("otlp_endpoint needs the OTLP exporter: pip install 'appliance[otlp]'")


def _check_alerting(config: ServerConfig) -> None:
    from appliance.server.slo import SloError, check_slo_settings

    positive = ("slo_min_requests", "alert_interval_s", "alert_window_s", "alert_preemptions_per_min",
                "alert_queue_depth", "alert_tenant_min_errors", "alert_auth_failures")
    for name in positive:
        if not getattr(config, name) > 0:
            raise ConfigError(f"{name} must be positive, got {getattr(config, name)}")
    if not 0 < config.alert_tenant_error_ratio <= 1:
        raise ConfigError(f"alert_tenant_error_ratio must be in (0, 1], got "
                          f"{config.alert_tenant_error_ratio}")
    for name in ("price_per_1k_prompt_tokens", "price_per_1k_cached_tokens", "price_per_1k_generated_tokens",
                 "price_per_engine_second"):
        if not getattr(config, name) >= 0:
            raise ConfigError(f"{name} must be >= 0, got {getattr(config, name)}")
    try:
        check_slo_settings(config)
    except SloError as exc:
        raise ConfigError(str(exc)) from None


def load_config(overrides: dict[str, Any] | None = None, config_file: str | None = None,
                environ: dict[str, str] | None = None) -> ServerConfig:
    """Merge the layers; `overrides` are flags the user gave (None values are ignored)."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    path = config_file or environ.get(ENV_PREFIX + "CONFIG")
    if path:
        values.update(_read_toml(Path(path)))
    values.update(_read_env(environ))
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return ServerConfig(**values).validate()


def _field_types() -> dict[str, str]:
    return {f.name: str(f.type) for f in fields(ServerConfig)}


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: tomllib arrived in 3.11
        raise ConfigError("config files need Python >= 3.11 (tomllib); use flags or APPLIANCE_* "
                          "environment variables") from None
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    data = data.get("server", data)  # either a [server] table or top-level keys
    known = _field_types()
    out = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in known:
            raise ConfigError(f"config file {path}: unknown setting {key!r}")
        out[name] = _coerce(name, known[name], value)
    return out


def _read_env(environ: dict[str, str]) -> dict[str, Any]:
    out = {}
    for name, type_name in _field_types().items():
        raw = environ.get(ENV_PREFIX + name.upper())
        if raw is not None and raw != "":
            out[name] = _coerce(name, type_name, raw)
    return out


def _coerce(name: str, type_name: str, value: Any) -> Any:
    try:
        if type_name.startswith("bool"):
            return value if isinstance(value, bool) else _parse_bool(str(value))
        if type_name.startswith("int"):
            if isinstance(value, bool):
                raise ValueError
            return int(value)
        if type_name.startswith("float"):
            return float(value)
    except ValueError:
        raise ConfigError(f"setting {name}: cannot read {value!r} as {type_name}") from None
    return str(value)


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


def replace(config: ServerConfig, **changes: Any) -> ServerConfig:
    return dataclasses.replace(config, **changes).validate()
