"""`appliance models add|list|canary|promote|rollback|retire`: model versions of a running appliance.

Versions live in the server's memory, so these go through its admin API (`--url`, an admin key), not
the data directory. `add` waits until the version has loaded (or failed) unless `--no-wait`; with
`--canary SHARE` it then makes it the canary. Errors are one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import json
import time
import urllib.error
import urllib.request

from appliance.cli import UserError
from appliance.commands.remote import server_arguments, url_and_key

LOAD_POLL_S = 1.0
LOAD_TIMEOUT_S = 1800.0


def register(subparsers: argparse._SubParsersAction) -> None:
    models = subparsers.add_parser("models", help="model versions: add, canary, promote, roll back, retire")
    sub = models.add_subparsers(dest="models_command", metavar="ACTION")
    _register_add(sub)
    for name, help_, func in (("list", "versions, the split and the latest moves", models_list),
                              ("rollback", "send traffic back: end the canary, else restore the previous "
                                           "live version", models_rollback)):
        p = sub.add_parser(name, help=help_)
        if name == "rollback":
            p.add_argument("--reason", default="", help="why (kept in the model events)")
        server_arguments(p)
        p.set_defaults(func=func)
    canary = sub.add_parser("canary", help="make a loaded version the canary, or change its share")
    canary.add_argument("name")
    canary.add_argument("--share", type=float, required=True, help="share of conversations (0-1)")
    canary.add_argument("--tenant", action="append", default=[], help="a tenant sent to it always (repeat)")
    server_arguments(canary)
    canary.set_defaults(func=models_canary)
    promote = sub.add_parser("promote", help="make the canary (or NAME) live; the old live version stays "
                                             "loaded for the rollback grace period")
    promote.add_argument("name", nargs="?", default=None)
    server_arguments(promote)
    promote.set_defaults(func=models_promote)
    retire = sub.add_parser("retire", help="unload a version that is not live")
    retire.add_argument("name")
    server_arguments(retire)
    retire.set_defaults(func=models_retire)
    models.set_defaults(func=lambda args: models.print_help() or 2)


def _register_add(sub: argparse._SubParsersAction) -> None:
    add = sub.add_parser("add", help="load a new version beside the live one")
    add.add_argument("name")
    add.add_argument("--source", default="",
                     help="GGUF file or HF checkpoint dir (default: the bundled model)")
    add.add_argument("--quantization", default="none", choices=("auto", "none", "int8", "int4"))
    add.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    add.add_argument("--notes", default="")
    add.add_argument("--canary", type=float, default=None, metavar="SHARE",
                     help="once loaded, make it the canary with this share of conversations")
    add.add_argument("--no-wait", action="store_true", help="return once the server has accepted it")
    server_arguments(add)
    add.set_defaults(func=models_add)


def call(args: argparse.Namespace, method: str, path: str, body: dict | None = None) -> dict:
    """One admin API call; the server's error message becomes a UserError."""
    url, key = url_and_key(args, "appliance models")
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    req = urllib.request.Request(url + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise UserError(_error_message(exc)) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UserError(f"cannot reach the appliance at {url}: {reason}") from None


def _error_message(exc: urllib.error.HTTPError) -> str:
    try:
        return f"{json.loads(exc.read())['error']['message']} (HTTP {exc.code})"
    except (ValueError, KeyError, TypeError):
        return f"HTTP {exc.code} {exc.reason}"


def models_add(args: argparse.Namespace) -> int:
    if args.canary is not None and not 0 <= args.canary <= 1:
        raise UserError("--canary must be a share from 0 to 1")
    doc = call(args, "POST", "/admin/models", {"name": args.name, "source": args.source,
                                               "quantization": args.quantization, "dtype": args.dtype,
                                               "notes": args.notes})
    if args.no_wait:
        print(f"{doc['name']}: {doc['state']}")
        return 0
    doc = _wait_loaded(args, args.name)
    if doc["state"] == "failed":
        raise UserError(f"version {args.name} failed to load: {doc['error']}")
    print(f"{doc['name']}: {doc['state']} ({doc['quantization']}, {doc['memory_bytes'] / 2**30:.2f} GiB, "
          f"sha256 {doc['weights_sha256'][:12]})")
    if args.canary is not None:
        doc = call(args, "POST", f"/admin/models/{args.name}/canary", {"share": args.canary})
        print(f"{doc['name']}: canary, share {doc['canary_share']:g}")
    return 0


def _wait_loaded(args: argparse.Namespace, name: str) -> dict:
    deadline = time.monotonic() + LOAD_TIMEOUT_S
    while True:
        doc = call(args, "GET", f"/admin/models/{name}")
        if doc["state"] != "loading":
            return doc
        if time.monotonic() > deadline:
            raise UserError(f"version {name} is still loading after {LOAD_TIMEOUT_S:.0f} s")
        time.sleep(LOAD_POLL_S)


def models_list(args: argparse.Namespace) -> int:
    doc = call(args, "GET", "/admin/models")
    print(f"serving {doc['served_model']}: live {doc['live']}, canary {doc['canary'] or '-'}"
          + (f" ({doc['canary_share']:g})" if doc["canary"] else ""))
    print(f"{'NAME':<16} {'STATE':<8} {'QUANT':<6} {'DTYPE':<9} {'GIB':>5} {'REQS':>6} {'ERR%':>6} "
          f"{'TTFT p90':>9}  ADDED")
    for v in doc["versions"]:
        w = v["metrics"]["window"]
        ttft = f"{w['ttft_p90_s']:.3f}" if w["ttft_p90_s"] is not None else "-"
        print(f"{v['name']:<16} {v['state']:<8} {v['quantization']:<6} {v['dtype']:<9} "
              f"{v['memory_bytes'] / 2**30:>5.2f} {v['metrics']['requests_total']:>6} "
              f"{100 * w['error_rate']:>6.1f} {ttft:>9}  {v['added_at']}")
    for e in doc["events"][:5]:
        why = f": {e['reason']}" if e["reason"] else ""
        print(f"  {e['time']} {e['action']} {e['version']} by {e['actor'] or 'the server'}{why}")
    return 0


def models_canary(args: argparse.Namespace) -> int:
    body = {"share": args.share, "tenants": args.tenant}
    doc = call(args, "POST", f"/admin/models/{args.name}/canary", body)
    print(f"{doc['name']}: canary, share {doc['canary_share']:g}")
    return 0


def models_promote(args: argparse.Namespace) -> int:
    path = f"/admin/models/{args.name}/promote" if args.name else "/admin/models/promote"
    doc = call(args, "POST", path)
    print(f"{doc['name']}: live (previous live {doc['previous_live']} stays loaded for rollback)")
    return 0


def models_rollback(args: argparse.Namespace) -> int:
    doc = call(args, "POST", "/admin/models/rollback", {"reason": args.reason} if args.reason else {})
    print(f"retired {doc['retired']}; live: {doc['live']}")
    return 0


def models_retire(args: argparse.Namespace) -> int:
    doc = call(args, "POST", f"/admin/models/{args.name}/retire")
    print(f"{doc['name']}: {doc['state']}")
    return 0
