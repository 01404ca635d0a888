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
            413: "Body too large", 429: "Rate limit or quota", 503: "Loading, draining, paused or full"}
    return {str(c): {"description": text[c], "content": {"application/json": {"schema": _ref("Error")}}}
            for c in codes}


_COMMON_ERRORS = (400, 401, 404, 413, 429, 503)

_SAMPLING = {
    "max_tokens": {"type": "integer", "minimum": 1, "nullable": True},
    "max_completion_tokens": {"type": "integer", "minimum": 1, "nullable": True},
    "min_tokens": {"type": "integer", "minimum": 0},
    "temperature": {"type": "number", "minimum": 0, "maximum": 100, "nullable": True},
    "top_p": {"type": "number", "exclusiveMinimum": True, "minimum": 0, "maximum": 1, "nullable": True},
    "top_k": {"type": "integer", "minimum": -1, "description": "0 or -1 disables top-k"},
    "seed": {"type": "integer", "nullable": True},
    "stop": {"nullable": True, "oneOf": [_STR, {"type": "array", "items": _STR, "maxItems": 16}]},
    "ignore_eos": _BOOL,
    "n": {"type": "integer", "enum": [1]},
    "stream": _BOOL,
    "stream_options": {"type": "object", "nullable": True,
                       "properties": {"include_usage": _BOOL}},
    "user": _STR,
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
        "model": _STR, "messages": {"type": "array", "minItems": 1, "items": _ref("Message")}, **_SAMPLING}},
    "CompletionRequest": {"type": "object", "required": ["model", "prompt"], "properties": {
        "model": _STR, "prompt": {"oneOf": [_STR, {"type": "array", "minItems": 1,
                                                   "items": {"type": "integer", "minimum": 0}}]},
        **_SAMPLING}},
    "ChatCompletion": {"type": "object", "properties": {
        "id": _STR, "object": _STR, "created": _INT, "model": _STR, "usage": _ref("Usage"),
        "choices": {"type": "array", "items": {"type": "object", "properties": {
            "index": _INT, "finish_reason": _STR,
            "message": {"type": "object", "properties": {"role": _STR, "content": _STR}}}}}}},
    "Completion": {"type": "object", "properties": {
        "id": _STR, "object": _STR, "created": _INT, "model": _STR, "usage": _ref("Usage"),
        "choices": {"type": "array", "items": {"type": "object", "properties": {
            "index": _INT, "text": _STR, "finish_reason": _STR}}}}},
    "RetrieveRequest": {"type": "object", "required": ["query", "collection"], "properties": {
        "query": {"type": "string", "minLength": 1, "maxLength": 8192},
        "collection": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"},
        "top_k": {"type": "integer", "minimum": 1, "maximum": 50},
        "mode": {"type": "string", "enum": ["hybrid", "dense", "sparse"]}}},
    "Hit": {"type": "object", "properties": {"id": _STR, "doc_id": _STR, "source": _STR, "chunk_index": _INT,
                                             "text": _STR, "score": _NUM}},
    "RagQueryRequest": {"type": "object", "required": ["query", "collection"], "properties": {
        "query": {"type": "string", "minLength": 1, "maxLength": 8192},
        "collection": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"},
        "top_k": {"type": "integer", "minimum": 1, "maximum": 50},
        "max_tokens": {"type": "integer", "minimum": 1}, "temperature": {"type": "number", "minimum": 0},
        "stream": _BOOL, "system_prompt": _STR}},
    "Source": {"type": "object", "properties": {"label": _STR, "doc_id": _STR, "source": _STR,
                                                "chunk_index": _INT, "score": _NUM}},
    "RagAnswer": {"type": "object", "properties": {
        "id": _STR, "object": _STR, "model": _STR, "answer": _STR, "finish_reason": _STR,
        "sources": {"type": "array", "items": _ref("Source")}, "usage": _ref("Usage")}},
    "DocResult": {"type": "object", "properties": {
        "source": _STR, "doc_id": _STR, "status": {"type": "string", "enum": ["added", "skipped", "replaced",
                                                                              "failed"]},
        "chunks": _INT, "error": {"type": "string", "nullable": True}}},
    "Document": {"type": "object", "properties": {
        "doc_id": _STR, "source": _STR, "chunks": _INT, "content_sha256": _STR, "status": _STR,
        "updated_at": _STR}},
}

_COLLECTION_PARAM = {"name": "collection", "in": "path", "required": True,
                     "schema": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"}}


def _paths() -> dict:
    return {
        "/health": {"get": {"summary": "Readiness", "security": [], "responses": {
            "200": _ok({"type": "object"}), "503": {"description": "Loading or draining"}}}},
        "/v1/models": {"get": {"summary": "Served models", "responses": {
            "200": _ok({"type": "object"}), **_errors(401, 503)}}},
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
            "parameters": [_COLLECTION_PARAM, {"name": "doc_id", "in": "path", "required": True,
                                               "schema": _STR}],
            "delete": {"summary": "Delete a document", "responses": {
                "200": _ok({"type": "object", "properties": {"deleted": _BOOL}}),
                **_errors(400, 401, 404, 503)}}},
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
