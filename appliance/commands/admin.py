"""`appliance tenants create|list` and `appliance keys create|list|revoke`: the control plane from the shell.

They open the same SQLite file as a running server (WAL), so they work while it serves. A new key
is printed once, alone on the last line of stdout; only its hash is stored.
"""

from __future__ import annotations

import argparse
import os

from appliance.cli import UserError


def _data_dir_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=None, help="state directory (APPLIANCE_DATA_DIR, default ./data)")


def _store(args: argparse.Namespace):
    from appliance.server.store import ControlStore

    data_dir = args.data_dir or os.environ.get("APPLIANCE_DATA_DIR") or "./data"
    return ControlStore.open(data_dir)


def register(subparsers: argparse._SubParsersAction) -> None:
    _register_tenants(subparsers)
    _register_keys(subparsers)


def _register_tenants(subparsers: argparse._SubParsersAction) -> None:
    tenants = subparsers.add_parser("tenants", help="create and list tenants")
    tsub = tenants.add_subparsers(dest="tenants_command", metavar="ACTION")
    create = tsub.add_parser("create", help="create a tenant")
    create.add_argument("name")
    create.add_argument("--token-quota", type=int, default=None,
                        help="tokens per UTC day (default unlimited)")
    create.add_argument("--rpm", type=int, default=None, help="requests per minute (default unlimited)")
    _data_dir_arg(create)
    create.set_defaults(func=tenants_create)
    listing = tsub.add_parser("list", help="list tenants")
    _data_dir_arg(listing)
    listing.set_defaults(func=tenants_list)
    tenants.set_defaults(func=lambda args: tenants.print_help() or 2)


def _register_keys(subparsers: argparse._SubParsersAction) -> None:
    keys = subparsers.add_parser("keys", help="create, list and revoke API keys")
    ksub = keys.add_subparsers(dest="keys_command", metavar="ACTION")
    kcreate = ksub.add_parser("create", help="create an API key (printed once, on the last line)")
    kcreate.add_argument("--tenant", default=None, help="the key's tenant (admin keys default to 'admin')")
    kcreate.add_argument("--admin", action="store_true", help="an admin key (may call every endpoint)")
    kcreate.add_argument("--name", default="", help="a label for the key")
    _data_dir_arg(kcreate)
    kcreate.set_defaults(func=keys_create)
    klist = ksub.add_parser("list", help="list keys (ids, never the keys)")
    klist.add_argument("--tenant", default=None)
    _data_dir_arg(klist)
    klist.set_defaults(func=keys_list)
    revoke = ksub.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("key_id")
    _data_dir_arg(revoke)
    revoke.set_defaults(func=keys_revoke)
    keys.set_defaults(func=lambda args: keys.print_help() or 2)


def tenants_create(args: argparse.Namespace) -> int:
    from appliance.server.store import StoreError

    store = _store(args)
    try:
        tenant = store.create_tenant(args.name, args.token_quota, args.rpm)
    except StoreError as exc:
        raise UserError(str(exc)) from None
    finally:
        store.close()
    print(f"created tenant {tenant.name} (tokens/day: {_limit(tenant.token_quota_per_day)}, "
          f"requests/min: {_limit(tenant.requests_per_minute)})")
    return 0


def tenants_list(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        tenants = store.list_tenants()
    finally:
        store.close()
    print(f"{'NAME':<24} {'TOKENS/DAY':>12} {'REQ/MIN':>8}  CREATED")
    for t in tenants:
        print(f"{t.name:<24} {_limit(t.token_quota_per_day):>12} {_limit(t.requests_per_minute):>8}  "
              f"{t.created_at}")
    return 0


def keys_create(args: argparse.Namespace) -> int:
    from appliance.server.store import ADMIN_TENANT, StoreError

    tenant = args.tenant or (ADMIN_TENANT if args.admin else None)
    if tenant is None:
        raise UserError("--tenant is required (or --admin for an admin key)")
    store = _store(args)
    try:
        key_id, key = store.create_key(tenant, "admin" if args.admin else "tenant", args.name)
    except StoreError as exc:
        raise UserError(str(exc)) from None
    finally:
        store.close()
    role = "admin" if args.admin else "tenant"
    print(f"created {role} key {key_id} for tenant {tenant}; it is shown only once:")
    print(key)
    return 0


def keys_list(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        keys = store.list_keys(args.tenant)
    finally:
        store.close()
    print(f"{'ID':<14} {'TENANT':<20} {'ROLE':<7} {'STATUS':<8} {'CREATED':<26} NAME")
    for k in keys:
        status = "revoked" if k["revoked_at"] else "active"
        print(f"{k['id']:<14} {k['tenant']:<20} {k['role']:<7} {status:<8} {k['created_at']:<26} "
              f"{k['name'] or ''}")
    return 0


def keys_revoke(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        revoked = store.revoke_key(args.key_id)
    finally:
        store.close()
    if not revoked:
        raise UserError(f"no active key with id {args.key_id!r}")
    print(f"revoked key {args.key_id}")
    return 0


def _limit(value: int | None) -> str:
    return "unlimited" if value is None else str(value)
