"""Admission caps, the usage ledger, the upload budget and the audit writer, without a server.

The writer runs against a real SQLite control store in a temporary directory.
"""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from appliance.server.admission import Admission, TenantCaps, UploadBudget, UploadHold
from appliance.server.audit_writer import AuditWriter
from appliance.server.config import ServerConfig
from appliance.server.control import UsageLedger
from appliance.server.errors import ApiError
from appliance.server.limits import caps_for
from appliance.server.store import AuditEntry, ControlStore, Principal, Tenant


def _tenant(name: str = "acme", **limits) -> Tenant:
    return Tenant(name, limits.pop("token_quota_per_day", None), None, "2025-01-01", **limits)


def _refused(call, status: int, code: str) -> ApiError:
    with pytest.raises(ApiError) as err:
        call()
    assert (err.value.status, err.value.code) == (status, code)
    assert int(err.value.headers["Retry-After"]) >= 1
    return err.value


async def test_concurrency_cap_is_per_tenant_and_frees_on_release():
    a = Admission(max_queued_requests=100, max_queued_tokens=10_000)
    caps = TenantCaps(max_concurrent=2)
    first, second = a.admit("a1", 10, "a", caps), a.admit("a2", 10, "a", caps)
    _refused(lambda: a.admit("a3", 10, "a", caps), 429, "tenant_concurrency_limit")
    a.admit("b1", 10, "b", caps)  # another tenant is not held back
    a.started(first)  # running still counts: the cap is on requests in flight
    _refused(lambda: a.admit("a3", 10, "a", caps), 429, "tenant_concurrency_limit")
    a.release(second)
    a.admit("a3", 10, "a", caps)
    assert a.snapshot()["tenants"]["a"] == {"inflight": 2, "queued_tokens": 10}


async def test_queued_token_cap_lets_a_lone_request_through():
    a = Admission(max_queued_requests=100, max_queued_tokens=10_000)
    caps = TenantCaps(max_queued_tokens=100)
    big = a.admit("c1", 150, "c", caps)  # alone it may pass the cap, or it could never run
    _refused(lambda: a.admit("c2", 1, "c", caps), 429, "tenant_queue_limit")
    a.admit("d1", 90, "d", caps)
    a.started(big)
    a.admit("c2", 60, "c", caps)
    _refused(lambda: a.admit("c3", 50, "c", caps), 429, "tenant_queue_limit")


async def test_in_flight_tokens_are_summed_per_tenant_and_dropped_on_release():
    a = Admission(max_queued_requests=100, max_queued_tokens=10_000)
    one, two = a.admit("x1", 30, "x"), a.admit("x2", 20, "x")
    a.admit("y1", 5, "y")
    assert a.tenant_tokens("x") == 50
    a.count_tokens(one, 30 + 7)
    assert a.tenant_tokens("x") == 57
    a.release(one)
    a.release(one)  # idempotent
    assert a.tenant_tokens("x") == 20
    a.release(two)
    assert a.tenant_tokens("x") == 0 and "x" not in a.tenants and a.num_queued == 1


def test_caps_default_for_tenants_and_only_their_own_for_the_admin():
    config = ServerConfig(default_max_concurrent_requests=16, default_max_queued_tokens_per_tenant=500)
    tenant = Principal("k1", "acme", "tenant")
    admin = Principal("k2", "admin", "admin")
    assert caps_for(tenant, _tenant(), config) == TenantCaps(16, 500)
    assert caps_for(tenant, _tenant(max_concurrent_requests=3), config) == TenantCaps(3, 500)
    assert caps_for(admin, _tenant("admin"), config) == TenantCaps(None, None)
    assert caps_for(admin, _tenant("admin", max_queued_tokens=9), config) == TenantCaps(None, 9)


def test_usage_ledger_seeds_once_and_adds_at_once():
    ledger = UsageLedger()
    assert not ledger.is_seeded("acme") and ledger.used("acme") == 0
    ledger.add("acme", 40)  # a request ended before the seed read came back
    ledger.seed("acme", "1999-01-01", 1000)  # ... so that stale read is ignored
    assert ledger.used("acme") == 40 and ledger.is_seeded("acme")
    ledger.add("acme", 2)
    assert ledger.used("acme") == 42
    ledger.forget("acme")
    assert not ledger.is_seeded("acme") and ledger.used("acme") == 0


def test_upload_budget_holds_and_gives_back():
    budget = UploadBudget(limit=100)
    first = UploadHold(budget)
    first.need(60)
    first.need(40)  # already reserved
    second = UploadHold(budget)
    _refused(lambda: second.need(41), 503, "upload_capacity")
    assert budget.held == 60 and second.reserved == 0
    second.need(40)
    first.release()
    first.release()  # idempotent
    assert budget.held == 40


def _entry(i: int, tenant: str = "acme") -> AuditEntry:
    return AuditEntry(tenant, "key", "POST", "/v1/completions", 200, f"req-{i}", 1.0, 3, 0, 2)


def _rows(store: ControlStore) -> int:
    with sqlite3.connect(store.path) as db:
        return db.execute("SELECT COUNT(*) FROM audit WHERE request_id LIKE 'req-%'").fetchone()[0]


async def test_audit_writer_writes_every_row_through_a_full_queue(tmp_path):
    store = ControlStore.open(tmp_path)
    store.create_tenant("acme")
    writer = AuditWriter(store, max_rows=4)  # far fewer slots than rows: submit must wait for room
    await asyncio.gather(*(writer.submit(_entry(i), True) for i in range(300)))
    assert await writer.flush(timeout=60)
    assert _rows(store) == 300 and store.tokens_today("acme") == 300 * 5
    await asyncio.gather(*(writer.submit(_entry(i), False) for i in range(300, 350)))
    await asyncio.to_thread(writer.close)  # what shutdown does: every queued row is written first
    assert _rows(store) == 350 and store.tokens_today("acme") == 300 * 5
    store.close()
