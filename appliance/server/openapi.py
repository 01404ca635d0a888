"""The OpenAPI 3.0 document of the public API (served at /openapi.json; fuzzed by the tests)."""

from __future__ import annotations

from typing import Any

_STR = {"type": "string"}
_INT = {"type": "integer"}
_NUM = {"type": "number"}
_BOOL = {"type": "boolean"}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json_body(schema: dict) -> dict:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _ok(schema: dict, description: str = "OK", sse: bool = False) -> dict:
    content: dict[str, Any] = {"application/json": {"schema": schema}}
    if sse:
        content["text/event-stream"] = {"schema": {"type": "string"}}
    return {"description": description, "content": content}


def _errors(*codes: int) -> dict:
    text = {400: "Invalid request", 401: "Missing or bad API key", 403: "Not allowed", 404: "Not found",
            409: "Already exists", 413: "Body too large", 429: "Rate limit or quota",
            503: "Loading, draining, paused or full", 504: "Timed out"}
    return {str(c): {"description": text[c], "content": {"application/json": {"schema": _ref("Error")}}}
            for c in codes}


_COMMON_ERRORS = (400, 401, 404, 413, 429, 503)
INT32_MAX = 2**31 - 1

# Fields every generation reads (chat, completions, RAG answers): what SamplingParams is built from.
_GENERATION = {
    "max_tokens": {"type": "integer", "minimum": 1, "nullable": True,
                   "description": "default: the server's default_max_tokens, capped by what fits"},
    "max_completion_tokens": {"type": "integer", "minimum": 1, "nullable": True,
                              "description": "takes precedence over max_tokens"},
    "min_tokens": {"type": "integer", "minimum": 0, "description": "at most max_tokens"},
    "temperature": {"type": "number", "minimum": 0, "maximum": 100, "nullable": True},
    "top_p": {"type": "number", "exclusiveMinimum": True, "minimum": 0, "maximum": 1, "nullable": True},
    "top_k": {"type": "integer", "minimum": -1, "maximum": INT32_MAX,
              "description": "0 or -1 disables top-k"},
    "seed": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1, "nullable": True},
    "stop": {"nullable": True, "oneOf": [_STR, {"type": "array", "items": _STR, "maxItems": 16}]},
    "stop_token_ids": {"type": "array", "maxItems": 64, "items": {"type": "integer", "minimum": 0,
                                                                  "maximum": INT32_MAX},
                       "description": "token ids that end the completion; each must be in the vocabulary"},
    "ignore_eos": _BOOL,
}

# OpenAI fields of chat and completions: accepted only with the values this server implements.
_OPENAI = {
    "stream": _BOOL,
    "stream_options": {"type": "object", "nullable": True, "description": "only with stream: true",
                       "properties": {"include_usage": _BOOL}},
    "n": {"type": "integer", "enum": [1]},
    "best_of": {"type": "integer", "enum": [1]},
    "presence_penalty": {"type": "number", "minimum": 0, "maximum": 0, "description": "only 0"},
    "frequency_penalty": {"type": "number", "minimum": 0, "maximum": 0, "description": "only 0"},
    "logprobs": {"type": "boolean", "enum": [False]},
    "echo": {"type": "boolean", "enum": [False]},
    "top_logprobs": {"type": "integer", "nullable": True, "description": "not supported: only null"},
    "logit_bias": {"type": "object", "maxProperties": 0, "description": "not supported: only {}"},
    "tools": {"type": "array", "maxItems": 0, "items": {}, "description": "not supported: only []"},
    "functions": {"type": "array", "maxItems": 0, "items": {}, "description": "not supported: only []"},
    "suffix": {"type": "string", "maxLength": 0, "description": "not supported: only \"\""},
    "response_format": {"type": "object", "required": ["type"],
                        "properties": {"type": {"type": "string", "enum": ["text"]}}},
    "user": {"type": "string", "description": "keeps a conversation on one model version when no "
                                              "X-Session-Id header is sent"},
}

_COLLECTION = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"}
_RETRIEVAL = {
    "query": {"type": "string", "minLength": 1, "maxLength": 8192},
    "collection": _COLLECTION,
    "top_k": {"type": "integer", "minimum": 1, "maximum": 50, "description": "chunks to retrieve"},
    "mode": {"type": "string", "enum": ["hybrid", "dense", "sparse"]},
}
_KV_REUSE = {"type": "string", "enum": ["prefix", "chunks"]}
_NAME = {"type": "string", "minLength": 1, "maxLength": 64}
_LIMIT = {"type": "integer", "minimum": 0, "nullable": True}
_TENANT_FIELDS = {
    "token_quota_per_day": {**_LIMIT, "description": "null: unlimited"},
    "requests_per_minute": {**_LIMIT, "description": "null: unlimited"},
    "max_concurrent_requests": {**_LIMIT, "minimum": 1, "description": "null: the server default"},
    "max_queued_tokens": {**_LIMIT, "minimum": 1, "description": "null: the server default"},
    "weight": {"type": "number", "minimum": 0.001, "maximum": 1000, "description": "fair-scheduling share"},
}

_SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "required": ["error"], "properties": {"error": {
        "type": "object", "required": ["message", "type"],
        "properties": {"message": _STR, "type": _STR, "param": {"type": "string", "nullable": True},
                       "code": {"type": "string", "nullable": True}}}}},
    "Usage": {"type": "object", "properties": {
        "prompt_tokens": _INT, "completion_tokens": _INT, "total_tokens": _INT,
        "prompt_tokens_details": {"type": "object", "properties": {"cached_tokens": _INT}}}},
    "Message": {"type": "object", "required": ["role", "content"], "properties": {
        "role": {"type": "string", "enum": ["system", "developer", "user", "assistant"]},
        "content": {"oneOf": [_STR, {"type": "array", "items": {
            "type": "object", "required": ["type", "text"],
            "properties": {"type": {"type": "string", "enum": ["text"]}, "text": _STR}}}]}}},
    "ChatRequest": {"type": "object", "required": ["model", "messages"], "properties": {
        "model": _STR,
        "messages": {"type": "array", "minItems": 1, "maxItems": 1024, "items": _ref("Message")},
        "public_prefix": {"type": "boolean", "description": "share the system prompt's KV across tenants"},
        **_GENERATION, **_OPENAI}},
    "CompletionRequest": {"type": "object", "required": ["model", "prompt"], "properties": {
        "model": _STR, "prompt": {"oneOf": [_STR, {"type": "array", "minItems": 1, "items": {
            "type": "integer", "minimum": 0, "description": "token ids, each in the vocabulary"}}]},
        **_GENERATION, **_OPENAI}},
    "ChatCompletion": {"type": "object", "properties": {
        "id": _STR, "object": _STR, "created": _INT, "model": _STR, "usage": _ref("Usage"),
        "choices": {"type": "array", "items": {"type": "object", "properties": {
            "index": _INT, "finish_reason": _STR,
            "message": {"type": "object", "properties": {"role": _STR, "content": _STR}}}}}}},
    "Completion": {"type": "object", "properties": {
        "id": _STR, "object": _STR, "created": _INT, "model": _STR, "usage": _ref("Usage"),
        "choices": {"type": "array", "items": {"type": "object", "properties": {
            "index": _INT, "text": _STR, "finish_reason": _STR}}}}},
    "RetrieveRequest": {"type": "object", "required": ["query", "collection"], "properties": _RETRIEVAL},
    "Hit": {"type": "object", "properties": {"id": _STR, "doc_id": _STR, "source": _STR, "chunk_index": _INT,
                                             "text": _STR, "score": _NUM}},
    "RagQueryRequest": {"type": "object", "required": ["query", "collection"], "properties": {
        **_GENERATION, **_RETRIEVAL, "stream": _BOOL,
        "temperature": {"type": "number", "minimum": 0, "maximum": 100, "description": "default 0 (greedy)"},
        "system_prompt": {"type": "string", "minLength": 1, "maxLength": 8192},
        "model": {"type": "string", "description": "a model version by name (default: routed)"},
        "user": _OPENAI["user"],
        "kv_reuse": {**_KV_REUSE,
                     "description": "prefix: exact prefix reuse only; chunks: also reuse stored chunk KV "
                                    "at any position (approximate); default: the collection's kv_reuse, "
                                    "else the server's rag_kv_reuse"}}},
    "Source": {"type": "object", "properties": {"label": _STR, "doc_id": _STR, "source": _STR,
                                                "chunk_index": _INT, "score": _NUM}},
    "RagAnswer": {"type": "object", "properties": {
        "id": _STR, "object": _STR, "model": _STR, "model_version": _STR, "answer": _STR,
        "finish_reason": _STR,
        "sources": {"type": "array", "items": _ref("Source")}, "usage": _ref("Usage")}},
    "DocResult": {"type": "object", "properties": {
        "source": _STR, "doc_id": _STR, "status": {"type": "string", "enum": ["added", "skipped", "replaced",
                                                                              "failed"]},
        "chunks": _INT, "error": {"type": "string", "nullable": True}}},
    "CollectionSettingsUpdate": {"type": "object", "minProperties": 1, "additionalProperties": False,
                                 "properties": {"kv_reuse": {
                                     **_KV_REUSE, "nullable": True,
                                     "description": "null: the server's rag_kv_reuse"}}},
    "CollectionSettings": {"type": "object", "properties": {
        "collection": _STR, "kv_reuse": {**_KV_REUSE, "nullable": True},
        "effective_kv_reuse": {**_KV_REUSE,
                               "description": "what /v1/rag/query uses when a request names none"}}},
    "Document": {"type": "object", "properties": {
        "doc_id": _STR, "source": _STR, "chunks": _INT, "content_sha256": _STR, "status": _STR,
        "updated_at": _STR}},
    "TenantCreate": {"type": "object", "required": ["name"], "properties": {"name": _NAME, **_TENANT_FIELDS}},
    "TenantUpdate": {"type": "object", "minProperties": 1, "additionalProperties": False,
                     "properties": _TENANT_FIELDS},
    "KeyCreate": {"type": "object", "properties": {
        "tenant": {**_NAME, "description": "required unless role is admin"},
        "role": {"type": "string", "enum": ["tenant", "admin"]},
        "name": {"type": "string", "maxLength": 200, "description": "a label for the key"}}},
    "PinRequest": {"type": "object", "description": "messages (system prefix) or prompt", "properties": {
        "messages": {"type": "array", "minItems": 1, "items": _ref("Message")}, "prompt": _STR,
        "tenant": {**_NAME, "description": "whose cache namespace; default: the caller's"},
        "public": {"type": "boolean", "description": "shared by every tenant"}}},
    "TracingSwitch": {"type": "object", "required": ["enabled"], "properties": {"enabled": _BOOL}},
    "ModelAdd": {"type": "object", "required": ["name"], "properties": {
        "name": _NAME, "source": {"type": "string", "description": "GGUF file or HF dir; default: bundled"},
        "quantization": {"type": "string", "enum": ["auto", "none", "int8", "int4"]},
        "dtype": {"type": "string", "enum": ["auto", "float32", "bfloat16", "float16"]}, "notes": _STR}},
    "CanarySet": {"type": "object", "properties": {
        "share": {"type": "number", "minimum": 0, "maximum": 1}, "tenants": {"type": "array", "items": _NAME},
        "objective": {"type": "object", "properties": {
            "window_s": _NUM, "min_requests": _NUM, "max_error_rate": _NUM, "max_ttft_p90_s": _NUM}}}},
    "Rollback": {"type": "object", "properties": {"reason": _STR}},
    "ModelRules": {"type": "object", "required": ["rules"], "properties": {"rules": {
        "type": "array", "items": {"type": "object", "required": ["name", "version"], "properties": {
            "name": _STR, "version": _NAME, "tenant": _NAME,
            "kind": {"type": "string", "enum": ["chat", "completion", "rag"]},
            "min_prompt_tokens": _INT, "max_prompt_tokens": _INT}}}}},
    "ModelAccess": {"type": "object", "required": ["tenant", "versions"], "properties": {
        "tenant": _NAME, "versions": {"type": "array", "nullable": True, "items": _NAME}}},
    "ChunkPrecompute": {"type": "object", "required": ["collection"], "properties": {
        "collection": _NAME, "tenant": {**_NAME, "description": "whose collection; default: the caller's"},
        "pin": {"type": "boolean", "description": "pin each stored chunk until /admin/cache/unpin"}}},
}

def _path_param(name: str, schema: dict | None = None) -> dict:
    return {"name": name, "in": "path", "required": True, "schema": schema or _STR}


_COLLECTION_PARAM = _path_param("collection", _COLLECTION)


def _probe_paths() -> dict:
    return {
        "/": {"get": {"summary": "Where things are", "security": [], "responses": {
            "200": _ok({"type": "object"})}}},
        "/health": {"get": {"summary": "Readiness", "security": [], "responses": {
            "200": _ok({"type": "object"}), "503": {"description": "Loading or draining"}}}},
        "/metrics": {"get": {"summary": "Prometheus metrics", "security": [], "responses": {
            "200": {"description": "Prometheus text format", "content": {"text/plain": {"schema": _STR}}},
            "503": {"description": "Loading"}}}},
        "/openapi.json": {"get": {"summary": "This document", "security": [], "responses": {
            "200": _ok({"type": "object"})}}},
    }


def _paths() -> dict:
    return {
        **_probe_paths(),
        "/v1/models": {"get": {"summary": "Served models", "responses": {
            "200": _ok({"type": "object"}), **_errors(401, 503)}}},
        "/v1/models/{model}": {
            "parameters": [_path_param("model", {"type": "string", "minLength": 1, "maxLength": 512})],
            "get": {"summary": "One served model", "responses": {
                "200": _ok({"type": "object"}), **_errors(401, 404, 503)}}},
        "/v1/chat/completions": {"post": {"summary": "Chat completion (OpenAI-compatible)",
                                          "requestBody": _json_body(_ref("ChatRequest")), "responses": {
            "200": _ok(_ref("ChatCompletion"), sse=True), **_errors(*_COMMON_ERRORS)}}},
        "/v1/completions": {"post": {"summary": "Text completion (OpenAI-compatible)",
                                     "requestBody": _json_body(_ref("CompletionRequest")), "responses": {
            "200": _ok(_ref("Completion"), sse=True), **_errors(*_COMMON_ERRORS)}}},
        "/v1/rag/retrieve": {"post": {"summary": "Retrieve chunks from one of your collections",
                                      "requestBody": _json_body(_ref("RetrieveRequest")), "responses": {
            "200": _ok({"type": "object", "properties": {"results": {"type": "array",
                                                                     "items": _ref("Hit")}}}),
            **_errors(*_COMMON_ERRORS)}}},
        "/v1/rag/query": {"post": {"summary": "Answer a question from one of your collections, with sources",
                                   "requestBody": _json_body(_ref("RagQueryRequest")), "responses": {
            "200": _ok(_ref("RagAnswer"), sse=True), **_errors(*_COMMON_ERRORS)}}},
        "/v1/collections": {"get": {"summary": "Your collections", "responses": {
            "200": _ok({"type": "object"}), **_errors(401, 503)}}},
        "/v1/collections/{collection}/documents": {
            "parameters": [_COLLECTION_PARAM],
            "get": {"summary": "Documents of a collection", "responses": {
                "200": _ok({"type": "object", "properties": {"documents": {"type": "array",
                                                                           "items": _ref("Document")}}}),
                **_errors(400, 401, 404, 503)}},
            "post": {"summary": "Upload documents (multipart, parts named `file`, filename = source path)",
                     "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                         "type": "object", "required": ["file"], "properties": {
                             "file": {"type": "string", "format": "binary"}}}}}},
                     "responses": {"200": _ok({"type": "object", "properties": {
                         "results": {"type": "array", "items": _ref("DocResult")}}}),
                         **_errors(*_COMMON_ERRORS)}}},
        "/v1/collections/{collection}/documents/{doc_id}": {
            "parameters": [_COLLECTION_PARAM, _path_param("doc_id")],
            "delete": {"summary": "Delete a document", "responses": {
                "200": _ok({"type": "object", "properties": {"deleted": _BOOL}}),
                **_errors(400, 401, 404, 503)}}},
        "/v1/collections/{collection}/settings": {
            "parameters": [_COLLECTION_PARAM],
            "get": {"summary": "A collection's settings: its default kv_reuse", "responses": {
                "200": _ok(_ref("CollectionSettings")), **_errors(400, 401, 404, 503)}},
            "patch": {"summary": "Set a collection's settings (null: back to the server's default)",
                      "requestBody": _json_body(_ref("CollectionSettingsUpdate")), "responses": {
                          "200": _ok(_ref("CollectionSettings")), **_errors(*_COMMON_ERRORS)}}},
        **_admin_paths(),
    }


def _admin(summary: str, body: str | None = None, ok: int = 200, errors: tuple[int, ...] = ()) -> dict:
    """An admin-key operation (tagged `admin`; a tenant key gets 403)."""
    op: dict[str, Any] = {"summary": summary, "tags": ["admin"], "responses": {
        str(ok): _ok({"type": "object"}), **_errors(*sorted({401, 403, *errors}))}}
    if body:
        op["requestBody"] = _json_body(_ref(body))
    return op


def _admin_paths() -> dict:
    tenant_name = [_path_param("name", _NAME)]
    return {
        "/admin/stats": {"get": _admin("One snapshot of KV, prefix cache, requests, throughput, tenants")},
        "/admin/tenants": {"get": _admin("Tenants"),
                           "post": _admin("Create a tenant", "TenantCreate", 201, (400, 409))},
        "/admin/tenants/{name}": {"parameters": tenant_name,
                                  "patch": _admin("Set a tenant's limits and weight (null: the default)",
                                                  "TenantUpdate", errors=(400, 404)),
                                  "delete": _admin("Delete a tenant and erase everything it owns",
                                                   errors=(404,))},
        "/admin/keys": {"get": {**_admin("API keys"), "parameters": [
                            {"name": "tenant", "in": "query", "required": False, "schema": _NAME}]},
                        "post": _admin("Create an API key (returned once)", "KeyCreate", 201, (400, 404))},
        "/admin/keys/{key_id}": {"parameters": [_path_param("key_id")],
                                 "delete": _admin("Revoke a key", errors=(404,))},
        "/admin/cache/flush": {"post": _admin("Drop unreferenced cached KV blocks")},
        "/admin/cache/pin": {"post": _admin("Compute a prefix once and keep its KV cached", "PinRequest",
                                            errors=(400,))},
        "/admin/cache/unpin": {"post": _admin("Unpin every pinned prefix and chunk")},
        "/admin/chunks/precompute": {"post": _admin("Store the KV of every chunk of a collection for "
                                                    "kv_reuse chunks", "ChunkPrecompute", errors=(400, 404))},
        "/admin/admission/pause": {"post": _admin("Refuse new generation requests (503)")},
        "/admin/admission/resume": {"post": _admin("Admit requests again")},
        "/admin/audit": {"get": {**_admin("Recent audit log rows", errors=(400,)), "parameters": [
            {"name": "limit", "in": "query", "required": False,
             "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}]}},
        "/admin/traces": {"get": {**_admin("Recent request traces (spans per stage)", errors=(400,)),
                                  "parameters": [
            {"name": "limit", "in": "query", "required": False,
             "schema": {"type": "integer", "minimum": 1, "maximum": 500}},
            {"name": "order", "in": "query", "required": False,
             "schema": {"type": "string", "enum": ["recent", "slowest"]}}]}},
        "/admin/tracing": {"post": _admin("Switch request tracing on or off", "TracingSwitch",
                                          errors=(400,))},
        "/admin/alerts": {"get": _admin("Every alert rule instance: firing or ok, since when, and why")},
        **_model_paths(),
    }


def _model_paths() -> dict:
    version = [_path_param("name", _NAME)]
    return {
        "/admin/models": {"get": _admin("Model versions, the split, rules, per-version metrics, moves"),
                          "post": _admin("Load a new model version beside the live one", "ModelAdd", 202,
                                         (400,))},
        "/admin/models/{name}": {"parameters": version, "get": _admin("One model version", errors=(404,))},
        "/admin/models/{name}/canary": {"parameters": version, "post": _admin(
            "Make a loaded version the canary, or change its share", "CanarySet", errors=(400, 404))},
        "/admin/models/promote": {"post": _admin("Make the canary live", errors=(400,))},
        "/admin/models/{name}/promote": {"parameters": version,
                                         "post": _admin("Make this version live", errors=(400, 404))},
        "/admin/models/rollback": {"post": _admin("End the canary, else restore the previous live version",
                                                  "Rollback", errors=(400,))},
        "/admin/models/{name}/retire": {"parameters": version, "post": _admin(
            "Unload a version that is not live", errors=(400, 404))},
        "/admin/models/rules": {"put": _admin("Routing rules, evaluated before the split", "ModelRules",
                                              errors=(400,))},
        "/admin/models/access": {"put": _admin("The model versions a tenant may use", "ModelAccess",
                                               errors=(400, 404))},
    }


def openapi_document(model_name: str = "") -> dict:
    return {
        "openapi": "3.0.3",
        "info": {"title": "appliance", "version": "0.1.0",
                 "description": "RAG-serving appliance: OpenAI-compatible completions, retrieval, documents. "
                                f"Served model: {model_name or '(loading)'}."},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
                       "schemas": _SCHEMAS},
        "paths": _paths(),
    }
