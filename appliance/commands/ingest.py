"""`appliance ingest PATH...` and `appliance documents list|delete`.

Locally the command opens the data dir's RAG store itself. When a server owns that store (it
holds the store lock), open fails with a one-line hint, and `--url/--api-key` sends the files
through the server's HTTP API instead, so the two never fight over the store. After the files,
`--kv-reuse` sets the collection's default and `--precompute-kv` has the server store its chunks'
KV (only through a server: that cache lives in the server process).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

from appliance.cli import UserError

if TYPE_CHECKING:
    from rag import IngestSummary, RagService

DEFAULT_DATA_DIR = "./data"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("ingest", help="add files or folders to a collection (idempotent, resumable)")
    p.add_argument(
        "paths", nargs="+", metavar="PATH", help="files or folders (folders are walked recursively)"
    )
    _add_target_args(p)
    p.add_argument("--include", action="append", metavar="GLOB", help="only files matching (repeatable)")
    p.add_argument("--exclude", action="append", metavar="GLOB", help="skip files matching (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the per-file results as JSON on stdout")
    p.add_argument("--kv-reuse", choices=["prefix", "chunks"],
                   help="after ingesting: make this the collection's default kv_reuse")
    p.add_argument("--precompute-kv", action="store_true",
                   help="after ingesting: have the server store every chunk's KV (--url, admin key)")
    p.add_argument("--pin-kv", action="store_true", help="with --precompute-kv: pin the stored chunks")
    p.set_defaults(func=run_ingest)

    d = subparsers.add_parser("documents", help="list or delete a collection's documents")
    dsub = d.add_subparsers(dest="documents_command", metavar="ACTION")
    lp = dsub.add_parser("list", help="documents of a collection with their status")
    _add_target_args(lp)
    lp.add_argument("--json", action="store_true")
    lp.set_defaults(func=run_list)
    dp = dsub.add_parser("delete", help="remove a document and all its chunks")
    dp.add_argument("doc_id")
    _add_target_args(dp)
    dp.set_defaults(func=run_delete)
    d.set_defaults(func=lambda args: d.print_help() or 2)


def _add_target_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--collection", required=True)
    p.add_argument("--tenant", help="tenant name (local mode; with --url the API key decides)")
    p.add_argument("--data-dir", help="state directory (APPLIANCE_DATA_DIR, default ./data)")
    p.add_argument(
        "--qdrant-url", help="Qdrant server instead of embedded Qdrant Edge (APPLIANCE_QDRANT_URL)"
    )
    p.add_argument(
        "--embed-model", help="sentence-transformers model dir (default: bundled all-MiniLM-L6-v2)"
    )
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--url", help="ingest through a running appliance server at this URL")
    p.add_argument("--api-key", help="API key for --url (APPLIANCE_API_KEY)")


def run_ingest(args: argparse.Namespace) -> int:
    _check_kv_flags(args)
    _validate(args)
    if args.url:
        return _ingest_remote(args, _client(args))
    with _LocalService(args) as service:
        return _ingest_local(args, service)


def _check_kv_flags(args: argparse.Namespace) -> None:
    if args.precompute_kv and not args.url:
        raise UserError("--precompute-kv needs --url and an admin key: the chunk KV cache lives in the "
                        "server process")
    if args.pin_kv and not args.precompute_kv:
        raise UserError("--pin-kv only goes with --precompute-kv")


def _ingest_local(args: argparse.Namespace, service: RagService) -> int:
    tenant = _tenant(args)
    summary = _ingest(args, partial(service.ingest_paths, args.paths, tenant, args.collection))
    if args.kv_reuse:
        service.update_collection_settings(tenant, args.collection, {"kv_reuse": args.kv_reuse})
        _print_kv_reuse(args)
    return 1 if summary.num_failed else 0


def _ingest_remote(args: argparse.Namespace, client: _Guarded) -> int:
    summary = _ingest(args, partial(client.upload_paths, args.paths, args.collection))
    if args.kv_reuse:
        client.update_collection_settings(args.collection, {"kv_reuse": args.kv_reuse})
        _print_kv_reuse(args)
    if args.precompute_kv:
        result = client.precompute_chunks(args.collection, args.pin_kv)
        print(_precompute_line(result, args.pin_kv), file=sys.stderr)
    return 1 if summary.num_failed else 0


def _ingest(args: argparse.Namespace, ingest: Callable[..., IngestSummary]) -> IngestSummary:
    """`ingest(include, exclude, progress)` under a progress bar, then its results and summary line."""
    from appliance.ingest_progress import RichIngestProgress, summary_line

    with RichIngestProgress(enabled=not args.quiet) as progress:
        summary = ingest(args.include, args.exclude, progress)
    if args.json:
        print(json.dumps(summary.to_dict(), indent=2))
    print(summary_line(summary), file=sys.stderr)
    return summary


def _print_kv_reuse(args: argparse.Namespace) -> None:
    print(f"collection {args.collection}: kv_reuse {args.kv_reuse} by default", file=sys.stderr)


def _precompute_line(result: dict, pinned: bool) -> str:
    pins = f", {result['pinned_blocks']} blocks pinned" if pinned else ""
    return (f"precomputed chunk KV of {result['collection']}: {result['chunks']} chunks, "
            f"{result['resident_chunks']} resident, {result['failed_chunks']} failed{pins} "
            f"in {result['seconds']:.1f}s")


def run_list(args: argparse.Namespace) -> int:
    _validate(args)
    if args.url:
        documents = _client(args).list_documents(args.collection)
    else:
        with _LocalService(args) as service:
            documents = [d.to_dict() for d in service.list_documents(_tenant(args), args.collection)]
    if args.json:
        print(json.dumps({"documents": documents}, indent=2))
        return 0
    for doc in documents:
        print(f"{doc['doc_id']}  {doc['status']:<9} {doc['chunks']:>6} chunks  {doc['source']}")
    return 0


def run_delete(args: argparse.Namespace) -> int:
    _validate(args)
    if args.url:
        deleted = _client(args).delete_document(args.collection, args.doc_id)
    else:
        with _LocalService(args) as service:
            deleted = service.delete_document(_tenant(args), args.collection, args.doc_id)
    if not deleted:
        raise UserError(f"document {args.doc_id} not found in collection {args.collection}")
    print(f"deleted {args.doc_id}")
    return 0


def _validate(args: argparse.Namespace) -> None:
    """Check names before anything slow (model load, network) happens."""
    from rag.types import Scope

    Scope(args.tenant or "-", args.collection)
    if args.url:
        _client(args)
    else:
        _tenant(args)


def _tenant(args: argparse.Namespace) -> str:
    if not args.tenant:
        raise UserError("--tenant is required (or use --url and --api-key to go through a server)")
    return args.tenant


def _client(args: argparse.Namespace):
    from appliance.ingest_client import ApiClientError, DocumentsClient

    api_key = args.api_key or os.environ.get("APPLIANCE_API_KEY")
    if not api_key:
        raise UserError("--url needs --api-key (or APPLIANCE_API_KEY)")
    if args.tenant:
        print("appliance: note: --tenant is ignored with --url (the API key decides)", file=sys.stderr)
    return _Guarded(DocumentsClient(args.url, api_key), ApiClientError)


class _Guarded:
    """Turns the client's fatal errors into UserError (one line, non-zero exit)."""

    def __init__(self, client, error_type: type[Exception]) -> None:
        self._client, self._error_type = client, error_type

    def __getattr__(self, name: str):
        method = getattr(self._client, name)

        def call(*args, **kwargs):
            try:
                return method(*args, **kwargs)
            except self._error_type as exc:
                raise UserError(str(exc)) from None

        return call


class _LocalService:
    """Context manager around RagService: store-busy and bad settings become one-line errors."""

    def __init__(self, args: argparse.Namespace) -> None:
        self._args = args
        self._service = None

    def __enter__(self):
        from pathlib import Path

        from rag import RagService, StoreBusyError

        args = self._args
        data_dir = Path(args.data_dir or os.environ.get("APPLIANCE_DATA_DIR") or DEFAULT_DATA_DIR)
        qdrant_url = args.qdrant_url or os.environ.get("APPLIANCE_QDRANT_URL") or None
        try:
            self._service = RagService(data_dir, qdrant_url, args.embed_model, args.device)
        except StoreBusyError as exc:
            raise UserError(str(exc)) from None
        return self._service

    def __exit__(self, *exc_info) -> None:
        if self._service is not None:
            self._service.close()
