"""The OpenAPI document lists every route, and every field each route's handler reads.

Fields are found in the source, not listed by hand: for each route registered in app.py, the
handler and every server function it calls (transitively) are read with `ast`, collecting the JSON
body fields they get through `Body` (`body.string("name")`, `body.raw(name)` in a loop over names,
`helper(body, "name")`, the tenant fields read through `FIELDS`), the query parameters
(`request.query.get("x")`) and the path parameters (`request.match_info["x"]`). A field a helper
adds tomorrow fails this test until the document names it.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pytest

import appliance.server
from appliance.server.openapi import openapi_document
from appliance.server.tenant_fields import FIELDS as TENANT_FIELDS

SERVER_DIR = Path(appliance.server.__file__).parent
PACKAGE = "appliance.server"
GETTERS = {"string", "integer", "number", "boolean", "obj", "raw", "has", "string_list"}
IGNORED_MARK = "accepted and ignored"


@dataclass(slots=True)
class Reads:
    body: set[str] = field(default_factory=set)
    query: set[str] = field(default_factory=set)
    path: set[str] = field(default_factory=set)
    calls: set[tuple[str, str]] = field(default_factory=set)  # (module, function)


@cache
def _tree(module: str) -> ast.Module:
    return ast.parse((SERVER_DIR / f"{module}.py").read_text())


@cache
def _imports(module: str) -> dict[str, tuple[str, str | None]]:
    """Local name -> (server module, function or None for the module itself), imports anywhere."""
    names: dict[str, tuple[str, str | None]] = {}
    for node in ast.walk(_tree(module)):
        if isinstance(node, ast.ImportFrom) and node.module == PACKAGE:
            names.update({a.asname or a.name: (a.name, None) for a in node.names})
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(PACKAGE + "."):
            source = node.module.rsplit(".", 1)[1]
            names.update({a.asname or a.name: (source, a.name) for a in node.names})
    return names


def _function(module: str, name: str) -> ast.AST | None:
    for node in _tree(module).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
            return node
    return None


def _loops(func: ast.AST) -> list[tuple[ast.For, dict[str, list[str]]]]:
    """`for name in ("a", "b"):` loops, each with its variable bound to the strings it takes."""
    loops = []
    for node in ast.walk(func):
        if isinstance(node, ast.For) and isinstance(node.target, ast.Name) and \
                isinstance(node.iter, (ast.Tuple, ast.List)):
            values = [e.value for e in node.iter.elts if isinstance(e, ast.Constant)]
            if values and all(isinstance(v, str) for v in values):
                loops.append((node, {node.target.id: values}))
    return loops


def _names_of(arg: ast.AST, loops: dict[str, list[str]]) -> list[str]:
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return [arg.value]
    if isinstance(arg, ast.Name):
        return loops.get(arg.id, [])
    return []


def _is_name(node: ast.AST, name: str) -> bool:
    return isinstance(node, ast.Name) and node.id == name


def _call_reads(node: ast.Call, loops: dict[str, list[str]], reads: Reads) -> None:
    func = node.func
    is_getter = isinstance(func, ast.Attribute) and _is_name(func.value, "body") and func.attr in GETTERS
    if is_getter and node.args:
        reads.body.update(_names_of(node.args[0], loops))
    for i, arg in enumerate(node.args[:-1]):  # helper(body, "field", ...)
        if _is_name(arg, "body"):
            reads.body.update(_names_of(node.args[i + 1], loops))
    if isinstance(func, ast.Attribute) and func.attr == "get" and isinstance(func.value, ast.Attribute) \
            and func.value.attr == "query" and node.args:
        reads.query.update(_names_of(node.args[0], loops))


def _callee(node: ast.Call, module: str) -> tuple[str, str] | None:
    func, imports = node.func, _imports(module)
    if isinstance(func, ast.Name):
        if func.id in imports and imports[func.id][1] is not None:
            return imports[func.id][0], imports[func.id][1]
        return (module, func.id) if _function(module, func.id) else None
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
        target = imports.get(func.value.id)
        if target is not None and target[1] is None:
            return target[0], func.attr
    return None


def _direct_reads(module: str, name: str) -> Reads:
    reads, func = Reads(), _function(module, name)
    if func is None:
        return reads
    for loop, names in _loops(func):
        for node in ast.walk(loop):
            if isinstance(node, ast.Call):
                _call_reads(node, names, reads)
    for node in ast.walk(func):
        if isinstance(node, ast.Call):
            _call_reads(node, {}, reads)
            callee = _callee(node, module)
            if callee is not None:
                reads.calls.add(callee)
        elif isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute) and \
                node.value.attr == "match_info":
            reads.path.update(_names_of(node.slice, {}))
        elif _is_name(node, "FIELDS") and _imports(module).get("FIELDS", ("", ""))[0] == "tenant_fields":
            reads.body.update(TENANT_FIELDS)
    return reads


def handler_reads(module: str, name: str) -> Reads:
    """What a handler and everything it calls in the server package read from the request."""
    total, todo, seen = Reads(), [(module, name)], set()
    while todo:
        key = todo.pop()
        if key in seen:
            continue
        seen.add(key)
        reads = _direct_reads(*key)
        total.body |= reads.body
        total.query |= reads.query
        total.path |= reads.path
        todo += list(reads.calls)
    return total


def routes() -> list[tuple[str, str, str, str]]:
    """(method, path, module, handler) of every route app.py registers."""
    found = []
    for node in ast.walk(_tree("app")):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                node.func.attr.startswith("add_") and len(node.args) == 2:
            path, handler = node.args
            if isinstance(handler, ast.Attribute):
                module, func = _imports("app")[handler.value.id][0], handler.attr
            else:
                module, func = "app", handler.id
            found.append((node.func.attr[4:], path.value, module, func))
    return found


def _resolve(doc: dict, schema: dict) -> dict:
    ref = schema.get("$ref")
    return doc["components"]["schemas"][ref.rsplit("/", 1)[1]] if ref else schema


def _operation(doc: dict, method: str, path: str) -> tuple[dict, list[dict]]:
    item = doc["paths"].get(path)
    assert item is not None and method in item, f"{method.upper()} {path} is not in the OpenAPI document"
    return item[method], item.get("parameters", []) + item[method].get("parameters", [])


def _body_properties(doc: dict, op: dict) -> dict:
    content = op.get("requestBody", {}).get("content", {})
    schema = content.get("application/json", {}).get("schema")
    return _resolve(doc, schema).get("properties", {}) if schema else {}


ROUTES = routes()


def test_the_extraction_finds_what_the_handlers_read():
    """Guards the test itself: fields read in loops, through helpers and through FIELDS are found."""
    chat = handler_reads("openai_routes", "chat_completions")
    assert {"messages", "stop_token_ids", "presence_penalty", "logit_bias", "public_prefix",
            "max_completion_tokens", "stream_options"} <= chat.body
    assert {"query", "collection", "top_k", "max_tokens", "stop_token_ids"} <= handler_reads(
        "rag_routes", "query").body
    assert set(TENANT_FIELDS) | {"name"} <= handler_reads("admin_routes", "create_tenant").body
    assert handler_reads("admin_routes", "update_tenant").path == {"name"}
    assert "tenant" in handler_reads("admin_routes", "list_keys").query
    assert len(ROUTES) >= 25 and ("post", "/v1/rag/query", "rag_routes", "query") in ROUTES


@pytest.mark.parametrize("method,path,module,handler", ROUTES, ids=[f"{r[0]} {r[1]}" for r in ROUTES])
def test_every_field_a_route_reads_is_in_the_openapi_document(method, path, module, handler):
    doc = openapi_document()
    op, params = _operation(doc, method, path)
    reads = handler_reads(module, handler)
    properties = _body_properties(doc, op)
    assert reads.body <= set(properties), f"not documented: {sorted(reads.body - set(properties))}"
    query = {p["name"] for p in params if p["in"] == "query"}
    assert reads.query <= query, f"query parameters not documented: {sorted(reads.query - query)}"
    path_params = {p["name"] for p in params if p["in"] == "path"}
    assert reads.path <= path_params, f"path parameters not documented: {sorted(reads.path - path_params)}"
    ignored = {k for k, v in properties.items() if IGNORED_MARK in v.get("description", "")}
    stale = set(properties) - reads.body - ignored
    assert not stale, f"documented but never read: {sorted(stale)}"


def test_every_documented_operation_is_a_route():
    doc = openapi_document()
    registered = {(m, p) for m, p, _, _ in ROUTES}
    documented = {(m, p) for p, item in doc["paths"].items() for m in item if m != "parameters"}
    assert documented == registered, (sorted(documented - registered), sorted(registered - documented))
