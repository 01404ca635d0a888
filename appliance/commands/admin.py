"""`appliance keys create|list|revoke` (and, from commands/tenants.py, `appliance tenants ...`).

They open the same SQLite file as a running server (WAL), so they work while it serves. A new key is
printed once, alone on the last line of stdout; only its hash is stored.
"""

from __future__ import annotations

import argparse
import os
from contextlib import closing

from appliance.cli import UserError


def data_dir_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=None, help="state directory (APPLIANCE_DATA_DIR, default ./data)")


def data_dir_of(args: argparse.Namespace) -> str:
    return args.data_dir or os.environ.get("APPLIANCE_DATA_DIR") or "./data"


def open_store(args: argparse.Namespace) -> closing:
    """The control store of --data-dir, closed when the `with` block ends."""
    from appliance.server.store import ControlStore

    return closing(ControlStore.open(data_dir_of(args)))


def register(subparsers: argparse._SubParsersAction) -> None:
    from appliance.commands import tenants

    tenants.register(subparsers)
    _register_keys(subparsers)


def _register_keys(subparsers: argparse._SubParsersAction) -> None:
    keys = subparsers.add_parser("keys", help="create, list and revoke API keys")
    ksub = keys.add_subparsers(dest="keys_command", metavar="ACTION")
    kcreate = ksub.add_parser("create", help="create an API key (printed once, on the last line)")
    kcreate.add_argument("--tenant", default=None, help="the key's tenant (admin keys default to 'admin')")
    kcreate.add_argument("--admin", action="store_true", help="an admin key (may call every endpoint)")
    kcreate.add_argument("--name", default="", help="a label for the key")
    data_dir_arg(kcreate)
    kcreate.set_defaults(func=keys_create)
    klist = ksub.add_parser("list", help="list keys (ids, never the keys)")
    klist.add_argument("--tenant", default=None)
    data_dir_arg(klist)
    klist.set_defaults(func=keys_list)
    revoke = ksub.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("key_id")
    data_dir_arg(revoke)
    revoke.set_defaults(func=keys_revoke)
    keys.set_defaults(func=lambda args: keys.print_help() or 2)


def keys_create(args: argparse.Namespace) -> int:
    from appliance.server.store import ADMIN_TENANT, StoreError

    tenant = args.tenant or (ADMIN_TENANT if args.admin else None)
    if tenant is None:
        raise UserError("--tenant is required (or --admin for an admin key)")
    with open_store(args) as store:
        try:
            key_id, key = store.create_key(tenant, "admin" if args.admin else "tenant", args.name)
        except StoreError as exc:
            raise UserError(str(exc)) from None
    role = "admin" if args.admin else "tenant"
    print(f"created {role} key {key_id} for tenant {tenant}; it is shown only once:")
    print(key)
    return 0


def keys_list(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        keys = store.list_keys(args.tenant)
    print(f"{'ID':<14} {'TENANT':<20} {'ROLE':<7} {'STATUS':<8} {'CREATED':<26} NAME")
    for k in keys:
        status = "revoked" if k["revoked_at"] else "active"
        print(f"{k['id']:<14} {k['tenant']:<20} {k['role']:<7} {status:<8} {k['created_at']:<26} "
              f"{k['name'] or ''}")
    return 0


def keys_revoke(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        revoked = store.revoke_key(args.key_id)
    if not revoked:
        raise UserError(f"no active key with id {args.key_id!r}")
    print(f"revoked key {args.key_id}")
    return 0

