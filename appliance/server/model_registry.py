"""Model versions in the control plane (SQLite): what each version is, its state, and every move.

A version's state says what traffic it takes, not whether its weights are in memory (that is the
fleet's business): `loading` (being read), `ready` (loaded, no traffic: a new version before its
canary, or the previous live one kept for rollback until its grace period ends), `canary` (a share of
traffic), `live` (the rest), `retired` (unloaded), `failed` (could not be loaded; `error` says why).
At most one version is live and at most one is canary. Every transition is written as an event
(who, what, when, why) beside the request's own audit row.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from appliance.server.store import ControlStore, StoreError, utc_now, valid_name

STATES = ("loading", "ready", "canary", "live", "retired", "failed")
RESIDENT_STATES = ("loading", "ready", "canary", "live")  # states whose weights are (being) loaded


@dataclass(slots=True)
class ModelVersion:
    name: str
    source: str  # the GGUF file or HF directory as given (empty: the bundled model)
    quantization: str
    dtype: str
    state: str
    added_at: str
    notes: str = ""
    weights_sha256: str | None = None
    error: str | None = None
    canary_share: float = 0.0  # while canary: the share of conversations it takes
    canary_tenants: list[str] = field(default_factory=list)  # while canary: tenants sent to it always
    retire_at: float | None = None  # epoch seconds: a ready version kept for rollback unloads then
    objective: dict = field(default_factory=dict)  # while canary: overrides of the canary_* settings

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(slots=True, frozen=True)
class ModelEvent:
    time: str
    action: str  # add | loaded | failed | canary | promote | rollback | retire | auto_rollback
    version: str
    previous: str | None
    actor: str | None  # the key id that asked (None: the server itself)
    reason: str | None

    def to_dict(self) -> dict:
        return asdict(self)


class ModelRegistry:
    """Blocking SQLite calls: from worker threads, or at start-up before the loop serves."""

    def __init__(self, store: ControlStore) -> None:
        self.db = store.db
        self._lock = store.lock  # one connection: one lock around every use of it
        with self._lock:
            self.db["model_versions"].create(
                {"name": str, "source": str, "quantization": str, "dtype": str, "state": str,
                 "added_at": str, "notes": str, "weights_sha256": str, "error": str,
                 "canary_share": float, "canary_tenants": str, "retire_at": float, "objective": str},
                pk="name", if_not_exists=True)
            self.db["model_events"].create(
                {"id": int, "time": str, "action": str, "version": str, "previous": str, "actor": str,
                 "reason": str}, pk="id", if_not_exists=True)
            self.db["model_settings"].create({"key": str, "value": str}, pk="key", if_not_exists=True)

    def add(self, version: ModelVersion) -> None:
        if not valid_name(version.name):
            raise StoreError("a version name must be 1-64 characters of letters, digits, '.', '_' or "
                             "'-', starting with a letter or digit", "name")
        with self._lock:
            existing = self._get(version.name)
            if existing is not None and existing.state not in ("retired", "failed"):
                raise StoreError(f"model version {version.name!r} already exists ({existing.state})", "name")
            self.db["model_versions"].upsert(_row(version), pk="name")

    def save(self, version: ModelVersion) -> None:
        with self._lock:
            self.db["model_versions"].upsert(_row(version), pk="name")

    def get(self, name: str) -> ModelVersion | None:
        with self._lock:
            return self._get(name)

    def _get(self, name: str) -> ModelVersion | None:
        rows = list(self.db["model_versions"].rows_where("name = ?", [name]))
        return _version(rows[0]) if rows else None

    def list(self) -> list[ModelVersion]:
        with self._lock:
            return [_version(r) for r in self.db["model_versions"].rows_where(order_by="added_at, name")]

    def log(self, action: str, version: str, previous: str | None = None, actor: str | None = None,
            reason: str | None = None) -> ModelEvent:
        event = ModelEvent(utc_now(), action, version, previous, actor, reason)
        with self._lock:
            self.db["model_events"].insert(event.to_dict())
        return event

    def routing(self) -> tuple[list[dict], dict[str, list[str]]]:
        """The routing rules (in order) and the per-tenant model permissions, as stored."""
        with self._lock:
            rows = {r["key"]: json.loads(r["value"]) for r in self.db["model_settings"].rows}
        return rows.get("rules", []), rows.get("access", {})

    def set_routing(self, rules: list[dict], access: dict[str, list[str]]) -> None:
        with self._lock:
            self.db["model_settings"].upsert_all(
                [{"key": "rules", "value": json.dumps(rules)},
                 {"key": "access", "value": json.dumps(access)}],
                pk="key")

    def events(self, limit: int = 50) -> list[ModelEvent]:
        with self._lock:
            rows = self.db["model_events"].rows_where(order_by="id desc", limit=limit)
            return [ModelEvent(**{k: v for k, v in r.items() if k != "id"}) for r in rows]


def _row(v: ModelVersion) -> dict:
    row = v.to_dict()
    row["canary_tenants"] = json.dumps(v.canary_tenants)
    row["objective"] = json.dumps(v.objective)
    return row


def _version(row: dict) -> ModelVersion:
    row = dict(row)
    row["canary_tenants"] = json.loads(row.get("canary_tenants") or "[]")
    row["objective"] = json.loads(row.get("objective") or "{}")
    row["notes"] = row.get("notes") or ""
    row["canary_share"] = row.get("canary_share") or 0.0
    return ModelVersion(**row)
