"""The control plane in SQLite (sqlite-utils, WAL): tenants, API keys, usage, audit log.

Keys are stored only as a SHA-256 hash: a generated key carries 256 random bits, so a fast hash is
enough (no dictionary to attack), and the lookup goes by the key's public id, never by the secret.
The comparison of hashes is constant-time. The server and the `appliance keys|tenants` commands may
open the same file at once: WAL plus a busy timeout lets them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import sqlite3
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import sqlite_utils

from appliance.server.tenant_fields import DEFAULT_WEIGHT, TenantFieldError, check_fields

KEY_PREFIX = "apk"
BOOTSTRAP_KEY_ID = "env-admin"
ADMIN_TENANT = "admin"
ROLES = ("tenant", "admin")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


_USAGE_UPSERT = (
    "INSERT INTO usage (tenant, day, requests, prompt_tokens, cached_tokens, completion_tokens)"
    " VALUES (?, ?, 1, ?, ?, ?) ON CONFLICT(tenant, day) DO UPDATE SET requests = requests + 1,"
    " prompt_tokens = prompt_tokens + excluded.prompt_tokens,"
    " cached_tokens = cached_tokens + excluded.cached_tokens,"
    " completion_tokens = completion_tokens + excluded.completion_tokens"
)
# Usage is counted only for a tenant that exists: a request of a tenant deleted while it ran must not
# bring back the usage row the deletion erased (whichever code path writes usage).
_USAGE_GUARD = (
    "CREATE TRIGGER IF NOT EXISTS usage_needs_tenant BEFORE INSERT ON usage"
    " WHEN NOT EXISTS (SELECT 1 FROM tenants WHERE name = NEW.tenant)"
    " BEGIN SELECT RAISE(IGNORE); END"
)


class StoreError(ValueError):
    """A control-plane request that cannot be honoured (unknown tenant, duplicate name, ...)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class UnknownTenantError(StoreError):
    """The named tenant does not exist (HTTP 404)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"tenant {name!r} does not exist", "name")


@dataclass(slots=True, frozen=True)
class Principal:
    """Who a request acts as: an admin key acts as the tenant `admin` for inference and retrieval."""

    key_id: str
    tenant: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


@dataclass(slots=True, frozen=True)
class Tenant:
    """A tenant and its limits; None limits mean unlimited (quota, rpm) or the server default (others)."""

    name: str
    token_quota_per_day: int | None
    requests_per_minute: int | None
    created_at: str
    max_concurrent_requests: int | None = None
    max_queued_tokens: int | None = None
    weight: float = DEFAULT_WEIGHT

    def to_dict(self) -> dict:
        return {"name": self.name, "token_quota_per_day": self.token_quota_per_day,
                "requests_per_minute": self.requests_per_minute,
                "max_concurrent_requests": self.max_concurrent_requests,
                "max_queued_tokens": self.max_queued_tokens, "weight": self.weight,
                "created_at": self.created_at}


@dataclass(slots=True)
class AuditEntry:
    tenant: str | None
    key_id: str | None
    method: str
    route: str
    status: int
    request_id: str
    duration_ms: float
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    error_code: str | None = None
    prompt: str | None = None
    detail: str | None = None  # JSON, for rows that record an operation (e.g. what a deletion erased)
    trace_id: str | None = None  # the request's trace (X-Trace-Id), when it was traced
    model_version: str | None = None  # the model version that served an inference request


def valid_name(name: object) -> bool:
    return isinstance(name, str) and bool(_NAME_RE.match(name))


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def utc_day() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d")


def key_id_of(key: str) -> str | None:
    """The public id inside a generated key `apk_<id>_<secret>`; None for any other shape."""
    parts = key.split("_", 2)
    if len(parts) == 3 and parts[0] == KEY_PREFIX and len(parts[1]) == 12 and parts[2]:
        return parts[1]
    return None


class ControlStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=10.0)
        conn.execute("PRAGMA busy_timeout = 10000")
        self.db = sqlite_utils.Database(conn)
        self.db.enable_wal()
        conn.execute("PRAGMA synchronous = NORMAL")
        self._lock = threading.Lock()
        with self._lock:
            self._create_tables()

    @property
    def lock(self) -> threading.Lock:
        """Held around every use of the connection (other tables' owners share it)."""
        return self._lock

    @classmethod
    def open(cls, data_dir: str | Path) -> ControlStore:
        return cls(Path(data_dir) / "control.db")

    def close(self) -> None:
        with self._lock:
            self.db.conn.close()

    def _create_tables(self) -> None:
        db = self.db
        db["tenants"].create({"name": str, "token_quota_per_day": int, "requests_per_minute": int,
                              "created_at": str}, pk="name", if_not_exists=True)
        _add_missing(db["tenants"], {"max_concurrent_requests": (int, None),
                                     "max_queued_tokens": (int, None), "weight": (float, DEFAULT_WEIGHT)})
        db["api_keys"].create({"id": str, "key_hash": str, "tenant": str, "role": str, "name": str,
                               "created_at": str, "revoked_at": str}, pk="id", if_not_exists=True)
        db["usage"].create({"tenant": str, "day": str, "requests": int, "prompt_tokens": int,
                            "cached_tokens": int, "completion_tokens": int},
                           pk=("tenant", "day"), if_not_exists=True)
        db.execute(_USAGE_GUARD)
        db["audit"].create({"id": int, "time": str, "tenant": str, "key_id": str, "method": str,
                            "route": str, "status": int, "request_id": str, "duration_ms": float,
                            "prompt_tokens": int, "cached_tokens": int, "completion_tokens": int,
                            "error_code": str, "prompt": str}, pk="id", if_not_exists=True)
        _add_missing(db["audit"], {"detail": (str, None), "trace_id": (str, None),
                                   "model_version": (str, None)})
        db["audit"].create_index(["tenant", "time"], if_not_exists=True)

    # --- tenants ---------------------------------------------------------------------------------
    def create_tenant(self, name: str, token_quota_per_day: int | None = None,
                      requests_per_minute: int | None = None, exist_ok: bool = False, *,
                      max_concurrent_requests: int | None = None, max_queued_tokens: int | None = None,
                      weight: float = DEFAULT_WEIGHT) -> Tenant:
        if not valid_name(name):
            raise StoreError("tenant name must be 1-64 characters of letters, digits, '.', '_' or '-', "
                             "starting with a letter or digit", "name")
        row = {"name": name, **_checked(token_quota_per_day=token_quota_per_day,
                                        requests_per_minute=requests_per_minute,
                                        max_concurrent_requests=max_concurrent_requests,
                                        max_queued_tokens=max_queued_tokens, weight=weight),
               "created_at": utc_now()}
        with self._lock:
            existing = self._tenant_row(name)
            if existing is not None:
                if exist_ok:
                    return existing
                raise StoreError(f"tenant {name!r} already exists", "name")
            self.db["tenants"].insert(row)
        return Tenant(**row)

    def update_tenant(self, name: str, **fields: object) -> Tenant:
        """Set some of a tenant's limits and weight (see tenant_fields); returns the updated tenant."""
        values = _checked(**fields)
        with self._lock:
            if self._tenant_row(name) is None:
                raise UnknownTenantError(name)
            if values:
                self.db["tenants"].update(name, values)
            return self._tenant_row(name)

    def get_tenant(self, name: str) -> Tenant | None:
        with self._lock:
            return self._tenant_row(name)

    def _tenant_row(self, name: str) -> Tenant | None:
        rows = list(self.db["tenants"].rows_where("name = ?", [name]))
        return Tenant(**rows[0]) if rows else None

    def list_tenants(self) -> list[Tenant]:
        with self._lock:
            return [Tenant(**row) for row in self.db["tenants"].rows_where(order_by="name")]

    def revoke_tenant_keys(self, name: str) -> int:
        """Revoke every active key of a tenant at once (the first step of deleting it)."""
        with self._lock:
            cur = self.db.execute("UPDATE api_keys SET revoked_at = ? WHERE tenant = ?"
                                  " AND revoked_at IS NULL", [utc_now(), name])
            return cur.rowcount

    def delete_tenant(self, name: str, erased: dict[str, int] | None = None, key_id: str | None = None,
                      request_id: str = "") -> dict:
        """Erase a tenant's rows (keys, usage, the tenant; prompts in its audit rows are blanked) and
        write one audit row whose `detail` lists what was erased, all in one transaction.

        `erased` carries the counts of what the caller erased elsewhere (vector store, KV cache, ...)
        so that the one audit row tells the whole story. Returns the counts written there.
        """
        if name == ADMIN_TENANT:
            raise StoreError("the admin tenant cannot be deleted", "name")
        with self._lock:
            if self._tenant_row(name) is None:
                raise UnknownTenantError(name)
            return self._erase(name, dict(erased or {}), key_id, request_id)

    def _erase(self, name: str, counts: dict[str, int], key_id: str | None, request_id: str) -> dict:
        conn = self.db.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            counts["keys"] = conn.execute("DELETE FROM api_keys WHERE tenant = ?", [name]).rowcount
            counts["usage_rows"] = conn.execute("DELETE FROM usage WHERE tenant = ?", [name]).rowcount
            counts["audit_prompts_blanked"] = conn.execute(
                "UPDATE audit SET prompt = NULL WHERE tenant = ? AND prompt IS NOT NULL", [name]).rowcount
            conn.execute("DELETE FROM tenants WHERE name = ?", [name])
            conn.execute("INSERT INTO audit (time, tenant, key_id, method, route, status, request_id,"
                         " duration_ms, prompt_tokens, cached_tokens, completion_tokens, detail)"
                         " VALUES (?, ?, ?, 'ERASE', 'tenant', 200, ?, 0, 0, 0, 0, ?)",
                         [utc_now(), name, key_id, request_id, json.dumps(counts, sort_keys=True)])
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return counts

    # --- keys --------------------------------------------------------------------------------
    def create_key(self, tenant: str, role: str = "tenant", name: str = "") -> tuple[str, str]:
        """Make a key; returns (key_id, key). The key itself is never stored and never shown again."""
        if role not in ROLES:
            raise StoreError(f"role must be one of {', '.join(ROLES)}")
        if self.get_tenant(tenant) is None:
            if tenant != ADMIN_TENANT:
                raise StoreError(f"tenant {tenant!r} does not exist; create it first")
            self.create_tenant(ADMIN_TENANT, exist_ok=True)
        key_id = secrets.token_hex(6)
        key = f"{KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
        with self._lock:
            self.db["api_keys"].insert({"id": key_id, "key_hash": hash_key(key), "tenant": tenant,
                                        "role": role, "name": name, "created_at": utc_now(),
                                        "revoked_at": None})
        return key_id, key

    def bootstrap_admin_key(self, key: str) -> None:
        """Make `key` (from APPLIANCE_ADMIN_KEY) a valid admin key, replacing an earlier bootstrap key."""
        self.create_tenant(ADMIN_TENANT, exist_ok=True)
        with self._lock:
            self.db["api_keys"].upsert({"id": BOOTSTRAP_KEY_ID, "key_hash": hash_key(key),
                                        "tenant": ADMIN_TENANT, "role": "admin",
                                        "name": "APPLIANCE_ADMIN_KEY", "created_at": utc_now(),
                                        "revoked_at": None}, pk="id")

    def list_keys(self, tenant: str | None = None) -> list[dict]:
        where, args = ("tenant = ?", [tenant]) if tenant else (None, [])
        with self._lock:
            rows = self.db["api_keys"].rows_where(where, args, order_by="created_at",
                                                  select="id, tenant, role, name, created_at, revoked_at")
            return [dict(row) for row in rows]

    def revoke_key(self, key_id: str) -> bool:
        with self._lock:
            cur = self.db.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                                  [utc_now(), key_id])
            return cur.rowcount > 0

    def authenticate(self, key: str) -> Principal | None:
        """The principal for a presented key, or None (unknown, wrong or revoked)."""
        key_id = key_id_of(key) or BOOTSTRAP_KEY_ID
        with self._lock:
            rows = list(self.db["api_keys"].rows_where("id = ?", [key_id]))
        presented = hash_key(key)
        if not rows:
            hmac.compare_digest(presented, presented)  # same work whether or not the id exists
            return None
        row = rows[0]
        if not hmac.compare_digest(presented, row["key_hash"]) or row["revoked_at"]:
            return None
        tenant = ADMIN_TENANT if row["role"] == "admin" else row["tenant"]
        return Principal(row["id"], tenant, row["role"])

    # --- usage and audit ---------------------------------------------------------------------
    def tokens_today(self, tenant: str) -> int:
        with self._lock:
            rows = list(self.db.execute(
                "SELECT prompt_tokens + completion_tokens FROM usage WHERE tenant = ? AND day = ?",
                [tenant, utc_day()]))
        return int(rows[0][0]) if rows else 0

    def record(self, entry: AuditEntry, count_usage: bool) -> None:
        """One audit row, and (for inference) the tenant's usage, in one transaction."""
        row = {"time": utc_now(), "tenant": entry.tenant, "key_id": entry.key_id, "method": entry.method,
               "route": entry.route, "status": entry.status, "request_id": entry.request_id,
               "duration_ms": round(entry.duration_ms, 3), "prompt_tokens": entry.prompt_tokens,
               "cached_tokens": entry.cached_tokens, "completion_tokens": entry.completion_tokens,
               "error_code": entry.error_code, "prompt": entry.prompt, "detail": entry.detail,
               "trace_id": entry.trace_id, "model_version": entry.model_version}
        columns = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        with self._lock:
            conn = self.db.conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(f"INSERT INTO audit ({columns}) VALUES ({marks})", list(row.values()))
                if count_usage and entry.tenant:
                    conn.execute(_USAGE_UPSERT, [entry.tenant, utc_day(), entry.prompt_tokens,
                                                 entry.cached_tokens, entry.completion_tokens])
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def usage_by_tenant(self) -> dict[str, dict]:
        """Per tenant: totals over all days and today's, for /admin/stats."""
        today = utc_day()
        sql = ("SELECT tenant, SUM(requests), SUM(prompt_tokens), SUM(cached_tokens), SUM(completion_tokens),"
               " SUM(CASE WHEN day = ? THEN prompt_tokens + completion_tokens ELSE 0 END)"
               " FROM usage GROUP BY tenant ORDER BY tenant")
        with self._lock:
            rows = list(self.db.execute(sql, [today]))
        return {t: {"requests": r, "prompt_tokens": p, "cached_tokens": c, "completion_tokens": g,
                    "tokens_today": d} for t, r, p, c, g, d in rows}

    def audit_rows(self, limit: int = 100) -> list[dict]:
        with self._lock:
            rows = self.db["audit"].rows_where(order_by="id desc", limit=limit)
            return [dict(row) for row in rows]


def _checked(**fields: object) -> dict:
    try:
        return check_fields(fields)
    except TenantFieldError as exc:
        raise StoreError(str(exc), exc.param) from None


def _add_missing(table: sqlite_utils.db.Table, columns: dict[str, tuple[type, object]]) -> None:
    """Migrate a database made by an older version: add the columns it lacks."""
    existing = table.columns_dict
    for name, (kind, default) in columns.items():
        if name not in existing:
            table.add_column(name, kind, not_null_default=default)
