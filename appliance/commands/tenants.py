"""`appliance tenants create|set|list|delete`: tenants, their limits and their erasure, from the shell.

create/set/list work on the SQLite file directly, also while a server runs (WAL; the server reads a
tenant's limits per request). delete erases everything of the tenant; with no server running it
opens the data dir's RAG store itself, and with a server running it goes through it (`--url` and an
admin `--api-key`), because only the server can abort the tenant's requests and drop its KV cache.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from urllib.parse import quote

from appliance.cli import UserError
from appliance.commands.admin import data_dir_arg, data_dir_of, open_store

DEFAULT_WORDS = ("default", "none", "unlimited")
_UNSET = object()


def register(subparsers: argparse._SubParsersAction) -> None:
    tenants = subparsers.add_parser("tenants", help="create, change, list and delete tenants")
    tsub = tenants.add_subparsers(dest="tenants_command", metavar="ACTION")
    create = tsub.add_parser("create", help="create a tenant")
    create.add_argument("name")
    _limit_args(create)
    create.set_defaults(func=tenants_create)
    change = tsub.add_parser("set", help="change a tenant's limits and weight")
    change.add_argument("name")
    _limit_args(change)
    change.set_defaults(func=tenants_set)
    listing = tsub.add_parser("list", help="list tenants")
    data_dir_arg(listing)
    listing.set_defaults(func=tenants_list)
    delete = tsub.add_parser("delete", help="delete a tenant and erase all its data")
    delete.add_argument("name")
    delete.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    delete.add_argument("--url", default=None, help="go through this running server (needs an admin key)")
    delete.add_argument("--api-key", default=None, help="admin key for --url (APPLIANCE_API_KEY)")
    data_dir_arg(delete)
    delete.set_defaults(func=tenants_delete)
    tenants.set_defaults(func=lambda args: tenants.print_help() or 2)


def _limit_args(p: argparse.ArgumentParser) -> None:
    word = "'unlimited'"
    p.add_argument("--token-quota", default=_UNSET, help=f"tokens per UTC day, or {word} (the default)")
    p.add_argument("--rpm", default=_UNSET, help=f"requests per minute, or {word} (the default)")
    p.add_argument("--max-concurrent", default=_UNSET,
                   help="requests in flight at once, or 'default' (the server's setting)")
    p.add_argument("--max-queued-tokens", default=_UNSET,
                   help="prompt tokens waiting to start, or 'default' (the server's setting)")
    p.add_argument("--weight", default=_UNSET, help="share of the engine under contention (default 1.0)")
    data_dir_arg(p)


def _fields(args: argparse.Namespace) -> dict:
    """The limit flags given, as store fields ('default'/'unlimited' -> None)."""
    flags = {"token_quota": "token_quota_per_day", "rpm": "requests_per_minute",
             "max_concurrent": "max_concurrent_requests", "max_queued_tokens": "max_queued_tokens"}
    fields = {field: _integer(flag, getattr(args, flag)) for flag, field in flags.items()
              if getattr(args, flag) is not _UNSET}
    if args.weight is not _UNSET:
        try:
            fields["weight"] = float(args.weight)
        except ValueError:
            raise UserError(f"--weight must be a number, got {args.weight!r}") from None
    return fields


def _integer(flag: str, text: str) -> int | None:
    if text.strip().lower() in DEFAULT_WORDS:
        return None
    try:
        return int(text)
    except ValueError:
        option = "--" + flag.replace("_", "-")
        raise UserError(f"{option} must be an integer or 'default', got {text!r}") from None


def _call(method, *args, **kwargs):
    from appliance.server.store import StoreError

    try:
        return method(*args, **kwargs)
    except StoreError as exc:
        raise UserError(str(exc)) from None


def tenants_create(args: argparse.Namespace) -> int:
    fields = _fields(args)
    quota = fields.pop("token_quota_per_day", None)
    rpm = fields.pop("requests_per_minute", None)
    with open_store(args) as store:
        tenant = _call(store.create_tenant, args.name, quota, rpm, **fields)
    print(f"created tenant {tenant.name} ({_describe(tenant)})")
    return 0


def tenants_set(args: argparse.Namespace) -> int:
    fields = _fields(args)
    if not fields:
        raise UserError("nothing to change: give --token-quota, --rpm, --max-concurrent, "
                        "--max-queued-tokens or --weight")
    with open_store(args) as store:
        tenant = _call(store.update_tenant, args.name, **fields)
    print(f"updated tenant {tenant.name} ({_describe(tenant)})")
    return 0


def tenants_list(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        tenants = store.list_tenants()
    print(f"{'NAME':<24} {'TOKENS/DAY':>12} {'REQ/MIN':>9} {'CONCURRENT':>10} {'QUEUED TOK':>10} "
          f"{'WEIGHT':>7}  CREATED")
    for t in tenants:
        print(f"{t.name:<24} {_limit(t.token_quota_per_day):>12} {_limit(t.requests_per_minute):>9} "
              f"{_default(t.max_concurrent_requests):>10} {_default(t.max_queued_tokens):>10} "
              f"{t.weight:>7g}  {t.created_at}")
    return 0


def _describe(t) -> str:
    return (f"tokens/day: {_limit(t.token_quota_per_day)}, requests/min: {_limit(t.requests_per_minute)}, "
            f"concurrent: {_default(t.max_concurrent_requests)}, queued tokens: "
            f"{_default(t.max_queued_tokens)}, weight: {t.weight:g}")


def _limit(value: int | None) -> str:
    return "unlimited" if value is None else str(value)


def _default(value: int | None) -> str:
    return "default" if value is None else str(value)


def tenants_delete(args: argparse.Namespace) -> int:
    _confirm(args)
    erased = _delete_remote(args) if args.url else _delete_local(args)
    print(f"deleted tenant {args.name}; erased: " + ", ".join(f"{k.replace('_', ' ')} {v}"
                                                            for k, v in sorted(erased.items())))
    return 0


def _confirm(args: argparse.Namespace) -> None:
    if args.yes:
        return
    if not sys.stdin.isatty():
        raise UserError(f"deleting tenant {args.name!r} erases all its data; add --yes to confirm")
    answer = input(f"Delete tenant {args.name!r} and erase all its data? Type its name to confirm: ")
    if answer.strip() != args.name:
        raise UserError("not confirmed; nothing was deleted")


def _delete_local(args: argparse.Namespace) -> dict:
    from appliance.server.tenant_erase import check_deletable, erase_offline

    with open_store(args) as store:
        _call(check_deletable, store, args.name)  # before the slow part (loading the embedder)
        rag = _open_rag(args)
        try:
            return _call(erase_offline, store, rag, args.name)
        finally:
            rag.close()


def _open_rag(args: argparse.Namespace):
    from pathlib import Path

    from rag import RagService, StoreBusyError

    qdrant_url = os.environ.get("APPLIANCE_QDRANT_URL") or None
    try:
        return RagService(Path(data_dir_of(args)), qdrant_url)
    except StoreBusyError:
        raise UserError(f"a running server owns {data_dir_of(args)}; delete through it: appliance tenants "
                        f"delete {args.name} --url URL --api-key ADMIN_KEY") from None


def _delete_remote(args: argparse.Namespace) -> dict:
    api_key = args.api_key or os.environ.get("APPLIANCE_API_KEY")
    if not api_key:
        raise UserError("--url needs --api-key (an admin key; or APPLIANCE_API_KEY)")
    url = f"{args.url.rstrip('/')}/admin/tenants/{quote(args.name, safe='')}"
    request = urllib.request.Request(url, method="DELETE", headers={"Authorization": f"Bearer {api_key}"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.loads(response.read())["erased"]
    except urllib.error.HTTPError as exc:
        raise UserError(f"the server refused: {_error_message(exc)}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise UserError(f"cannot reach {args.url}: {getattr(exc, 'reason', exc)}") from None


def _error_message(exc: urllib.error.HTTPError) -> str:
    try:
        return json.loads(exc.read())["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return f"HTTP {exc.code}"
