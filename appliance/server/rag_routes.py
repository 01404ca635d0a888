"""Retrieval and documents: `/v1/rag/retrieve`, `/v1/rag/query`, `/v1/collections/...`.

Every call is scoped to the caller's tenant: a collection name is looked up only among the
tenant's own collections, so naming another tenant's collection finds nothing (404), never its
data. RagService work (embedding, search, ingest) runs in worker threads, off the event loop.

Uploads go through admission: refused while paused or draining, their bytes held against a server-
wide budget (503 + Retry-After beyond it) until their ingest ends, and the ingest bounded in time
(504 `timeout`; the worker thread cannot be stopped, so the bytes stay held until it ends).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import aclosing
from functools import partial
from typing import TYPE_CHECKING
from urllib.parse import unquote

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from appliance.server.admission import UploadHold
from appliance.server.errors import ApiError, bad_request, not_found, timed_out
from appliance.server.generation import Job, admitted, run_job, usage_dict, validate_job
from appliance.server.openai_params import parse_sampling
from appliance.server.params import Body, read_json, too_large
from appliance.server.quality_stats import note_answer, note_retrieval
from appliance.server.rag_warmup import start_warmup
from appliance.server.sse import SseWriter
from appliance.server.state import AppState, RequestContext, ctx_of, principal_of, state_of
from appliance.server.store import valid_name
from appliance.server.version_pick import pick, requested_version
from engine import KV_REUSE_MODES, ChunkSpec
from rag import build_rag_prompt
from rag.settings import SEARCH_MODES

if TYPE_CHECKING:
    from rag.collection_settings import CollectionSettings

MAX_QUERY_CHARS = 8192
MAX_TOP_K = 50


def valid_collection(name: str) -> str:
    if not valid_name(name):
        raise bad_request("collection names are 1-64 characters of letters, digits, '.', '_' or '-', "
                          "starting with a letter or digit", "collection", "invalid_value")
    return name


def has_collection(state: AppState, tenant: str, collection: str) -> bool:
    return any(c.name == collection for c in state.need_rag().list_collections(tenant))


def missing_collection(collection: str) -> ApiError:
    return not_found(f"collection '{collection}' not found", "collection", "collection_not_found")


def kv_reuse_value(body: Body) -> str | None:
    """The body's `kv_reuse`: None when absent or null, else one of the engine's modes (or a 400)."""
    value = body.string("kv_reuse", None, max_len=16)
    if value is not None and value not in KV_REUSE_MODES:
        raise bad_request(f"'kv_reuse' must be one of {', '.join(KV_REUSE_MODES)}", "kv_reuse",
                          "invalid_value")
    return value


def effective_kv_reuse(state: AppState, settings: CollectionSettings, requested: str | None = None) -> str:
    """The one precedence: the request's field, then the collection's default, then the server's."""
    return requested or settings.kv_reuse or state.config.rag_kv_reuse


async def _retrieve(state: AppState, tenant: str, body: Body, default_top_k: int) -> tuple[str, list]:
    """Validate the retrieval fields and run the search; 404 when the tenant has no such collection."""
    query = body.string("query", max_len=MAX_QUERY_CHARS)
    collection = valid_collection(body.string("collection", max_len=64))
    top_k = body.integer("top_k", default_top_k, minimum=1, maximum=MAX_TOP_K)
    mode = body.string("mode", None, max_len=16)
    if mode is not None and mode not in SEARCH_MODES:
        raise bad_request(f"'mode' must be one of {', '.join(SEARCH_MODES)}", "mode", "invalid_value")
    rag = state.need_rag()

    def search() -> list | None:
        if not has_collection(state, tenant, collection):
            return None
        return rag.retrieve(tenant, collection, query, top_k, mode)

    started = time.monotonic()
    hits = await asyncio.to_thread(search)
    if hits is None:
        raise missing_collection(collection)
    state.metrics.observe_retrieval(time.monotonic() - started)
    note_retrieval(state, tenant, collection, mode, query, hits)
    return query, hits


async def retrieve(request: web.Request) -> web.Response:
    state = state_of(request)
    body = await read_json(request, state.config.max_body_bytes)
    _, hits = await _retrieve(state, principal_of(request).tenant, body, 5)
    return web.json_response({"results": [hit.to_dict() for hit in hits]})


async def query(request: web.Request) -> web.StreamResponse:
    state, ctx = state_of(request), ctx_of(request)
    body = await read_json(request, state.config.max_body_bytes)
    engine = state.need_engine()  # the live version: it warms the system prompt up
    requested = requested_version(body, state) if body.has("model") else None
    stream = body.boolean("stream", False)
    system = body.string("system_prompt", state.config.rag_system_prompt, max_len=MAX_QUERY_CHARS)
    if not body.has("temperature"):
        body.data["temperature"] = 0.0  # grounded answers: greedy unless asked otherwise
    tenant = principal_of(request).tenant
    requested_kv_reuse = kv_reuse_value(body)
    if system == state.config.rag_system_prompt:  # public: computed while retrieval runs if not cached
        start_warmup(engine, system, tenant, ctx.request_id)
    question, hits = await _retrieve(state, tenant, body, state.config.rag_top_k)
    collection = body.string("collection")  # checked by _retrieve
    kv_reuse = requested_kv_reuse or effective_kv_reuse(  # the collection's row only when needed
        state, await asyncio.to_thread(state.need_rag().collection_settings, tenant, collection))
    with ctx.trace.stage("prompt"):
        prompt = build_rag_prompt(system, hits, question)
        served, (prompt_ids, spans) = await pick(
            state, ctx, request, body, requested,
            lambda e: e.tokenizer.apply_chat_template_with_spans(prompt.messages(), list(prompt.chunk_texts)),
            kind="rag", measure=lambda tokenized: len(tokenized[0]))
        params = parse_sampling(body, state, len(prompt_ids), served.context_limit,
                                read_top_k=False)  # top_k: chunks, not tokens
        job = Job(f"rag-{ctx.request_id}", prompt_ids, params, tenant, served, "query",
                  chunks=ChunkSpec(tuple(spans), kv_reuse))
        if system == state.config.rag_system_prompt:  # the operator's prompt is the same for every tenant
            job.public_prefix_len = await asyncio.to_thread(served.engine.tokenizer.system_prefix_len,
                                                            prompt.messages(), prompt_ids)
    if state.config.log_prompts:
        ctx.prompt = question
    validate_job(job)
    head = {"id": job.request_id, "created": int(time.time()), "model": state.model_name,
            "model_version": served.name}
    with admitted(state, ctx, job) as ticket:
        if stream:
            answered = partial(note_answer, state, tenant, collection, hits=hits, version=served.name)
            return await _stream_answer(request, state, ctx, job, ticket, head, prompt.sources, answered)
        parts, finish_reason = [], None
        async with aclosing(run_job(state, ctx, job, ticket)) as outputs:
            async for out in outputs:
                parts.append(out.text_delta)
                finish_reason = out.finish_reason if out.finished else None
    answer = "".join(parts).strip()
    note_answer(state, tenant, collection, answer, hits, served.name)
    return web.json_response({**head, "object": "rag.answer", "answer": answer,
                              "sources": prompt.sources, "finish_reason": finish_reason,
                              "usage": usage_dict(ctx)})


async def _stream_answer(request: web.Request, state: AppState, ctx: RequestContext, job: Job, ticket,
                         head: dict, sources: list[dict],
                         answered: Callable[[str], None]) -> web.StreamResponse:
    """`answered(text)` is called with the whole answer once it is generated."""
    sse = SseWriter(request, ctx)
    chunk = {**head, "object": "rag.answer.chunk"}
    try:
        await sse.start()
        parts, finish_reason = [], None
        async with aclosing(run_job(state, ctx, job, ticket)) as outputs:
            async for out in outputs:
                if out.text_delta:
                    parts.append(out.text_delta)
                    await sse.send({**chunk, "delta": out.text_delta, "finish_reason": None})
                finish_reason = out.finish_reason if out.finished else None
        answered("".join(parts).strip())
        await sse.send({**chunk, "delta": "", "finish_reason": finish_reason, "sources": sources,
                        "usage": usage_dict(ctx)})
        if ctx.cutoff is not None:  # the quota ran out: finish_reason "length", then why
            await sse.fail(ctx.cutoff)
        else:
            await sse.done()
    except ApiError as err:
        await sse.fail(err)
    except ConnectionResetError:
        ctx.client_gone = True
    return sse.response


async def list_collections(request: web.Request) -> web.Response:
    state = state_of(request)
    rag = state.need_rag()
    collections = await asyncio.to_thread(rag.list_collections, principal_of(request).tenant)
    return web.json_response({"collections": [c.to_dict() for c in collections]})


async def list_documents(request: web.Request) -> web.Response:
    state = state_of(request)
    collection = valid_collection(request.match_info["collection"])
    tenant = principal_of(request).tenant
    docs = await asyncio.to_thread(state.need_rag().list_documents, tenant, collection)
    if not docs:
        raise missing_collection(collection)
    return web.json_response({"documents": [d.to_dict() for d in docs]})


async def delete_document(request: web.Request) -> web.Response:
    state = state_of(request)
    collection = valid_collection(request.match_info["collection"])
    doc_id = request.match_info["doc_id"]
    deleted = await asyncio.to_thread(state.need_rag().delete_document, principal_of(request).tenant,
                                      collection, doc_id)
    if not deleted:
        raise not_found(f"document '{doc_id}' not found in collection '{collection}'", "doc_id",
                        "document_not_found")
    return web.json_response({"deleted": True, "doc_id": doc_id})


async def upload_documents(request: web.Request) -> web.Response:
    """Ingest uploaded files; their bytes count against the server's upload budget until ingested."""
    state, ctx = state_of(request), ctx_of(request)
    collection = valid_collection(request.match_info["collection"])
    rag = state.need_rag()
    state.admission.check_open()
    hold = UploadHold(state.admission.uploads)
    try:
        with ctx.trace.stage("upload"):
            files = await _read_files(request, state.config.max_upload_bytes, hold)
    except BaseException:
        hold.release()
        raise
    tenant = principal_of(request).tenant
    ingest = asyncio.ensure_future(asyncio.to_thread(_ingest_files, rag, tenant, collection, files))
    ingest.add_done_callback(lambda task: _ingest_ended(task, hold))  # held while the thread runs
    num_files = len(files)
    del files
    try:
        with ctx.trace.stage("ingest", {"appliance.num_files": num_files}):
            results = await asyncio.wait_for(asyncio.shield(ingest), state.config.ingest_timeout_s)
    except asyncio.TimeoutError:
        raise timed_out(f"ingesting the upload took longer than the server's limit of "
                        f"{state.config.ingest_timeout_s:g} s; it goes on in the background, and "
                        "uploading the same files again is safe (unchanged files are skipped)") from None
    except _Refused as exc:
        raise bad_request(f"cannot ingest {exc.source!r}: {exc.reason}", "file", "invalid_value") from None
    for result in results:
        state.metrics.ingest_documents.inc(status=result.status)
        if result.status in ("added", "replaced"):
            state.metrics.ingest_chunks.inc(result.chunks)
    return web.json_response({"results": [result.to_dict() for result in results]})


def _ingest_ended(task: asyncio.Future, hold: UploadHold) -> None:
    hold.release()
    if not task.cancelled():
        task.exception()  # retrieved here too: after a timeout nobody else awaits it


class _Refused(Exception):
    def __init__(self, source: str, reason: str) -> None:
        super().__init__(source, reason)
        self.source, self.reason = source, reason


def _ingest_files(rag, tenant: str, collection: str, files: list[tuple[str, bytes]]) -> list:
    """Worker thread: ingest each file in turn; a file that cannot be ingested at all stops the rest."""
    results = []
    for source, data in files:
        try:
            results.append(rag.ingest_bytes(tenant, collection, source, data))
        except ValueError as exc:  # e.g. a source path that normalises to nothing
            raise _Refused(source, str(exc)) from None
    return results


async def _read_files(request: web.Request, limit: int, hold: UploadHold) -> list[tuple[str, bytes]]:
    """The multipart parts named `file`, each with its filename (the document's source path)."""
    if not request.content_type.startswith("multipart/"):
        raise bad_request("upload documents as multipart/form-data with one or more parts named 'file'",
                          "file", "invalid_content_type")
    if request.content_length is not None:
        if request.content_length > limit:
            raise too_large(limit)
        hold.need(request.content_length)  # the whole body at once: 503 before reading any of it
    try:
        return await _collect_parts(await request.multipart(), limit, hold)
    except (ValueError, AssertionError, KeyError, HttpProcessingError) as exc:
        reason = " ".join(str(exc).split())[:200]
        raise bad_request(f"malformed multipart body: {reason}", "file", "invalid_multipart") from None


def _source_name(filename: str) -> str:
    """aiohttp's client percent-encodes multipart filenames (`a%2Fb.txt`); curl and browsers do not."""
    return unquote(filename) if "%" in filename else filename


async def _collect_parts(reader, limit: int, hold: UploadHold) -> list[tuple[str, bytes]]:
    files, total = [], 0
    while (part := await reader.next()) is not None:
        if part.name != "file" or not hasattr(part, "read_chunk"):
            await part.release()
            continue
        if not part.filename or not part.filename.strip():
            raise bad_request("each 'file' part needs a filename (the document's source path)", "file",
                              "missing_filename")
        data = bytearray()
        while chunk := await part.read_chunk():
            total += len(chunk)
            if total > limit:
                raise too_large(limit)
            hold.need(total)  # a body without Content-Length reserves as it arrives
            data += chunk
        files.append((_source_name(part.filename), bytes(data)))
    if not files:
        raise bad_request("no parts named 'file' in the upload", "file", "missing_required_parameter")
    return files
