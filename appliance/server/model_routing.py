"""Which model version serves a request: an explicit name, then the operator's rules, then the split.

Order: a request that names a version (OpenAI `model`) gets it. Otherwise the first rule whose
conditions all hold (tenant, kind of request, prompt length) picks its version. Otherwise the canary
takes its named tenants and a share of conversations, and the live version the rest.

The split is sticky: a conversation (the `X-Session-Id` header or the OpenAI `user` field, else the
tenant as a whole) hashes to a fixed point in [0, 1) per canary, and goes to the canary when that
point is below the share. Raising the share only adds conversations, so a user's prefix cache stays
on one version for as long as the canary runs.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

KINDS = ("chat", "completion", "rag")
RULE_FIELDS = ("name", "version", "tenant", "kind", "min_prompt_tokens", "max_prompt_tokens")


class RuleError(ValueError):
    """A rule that cannot be used; `param` names the field."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(slots=True, frozen=True)
class RouteRequest:
    tenant: str
    session: str  # the sticky key within the tenant ("" = the tenant as a whole)
    kind: str  # chat | completion | rag
    num_prompt_tokens: int


@dataclass(slots=True, frozen=True)
class Rule:
    name: str
    version: str
    tenant: str | None = None
    kind: str | None = None
    min_prompt_tokens: int | None = None
    max_prompt_tokens: int | None = None

    def matches(self, req: RouteRequest) -> bool:
        return ((self.tenant is None or self.tenant == req.tenant)
                and (self.kind is None or self.kind == req.kind)
                and (self.min_prompt_tokens is None or req.num_prompt_tokens >= self.min_prompt_tokens)
                and (self.max_prompt_tokens is None or req.num_prompt_tokens <= self.max_prompt_tokens))

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def needs_prompt_length(self) -> bool:
        return self.min_prompt_tokens is not None or self.max_prompt_tokens is not None


@dataclass(slots=True, frozen=True)
class Split:
    live: str
    canary: str | None = None
    share: float = 0.0
    tenants: frozenset[str] = frozenset()


@dataclass(slots=True, frozen=True)
class Route:
    version: str
    reason: str  # "model" (named by the request) | "rule:<name>" | "canary" | "live"


def bucket(canary: str, req: RouteRequest) -> float:
    """The conversation's fixed point in [0, 1) for this canary."""
    digest = hashlib.sha256(f"{canary}\0{req.tenant}\0{req.session}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def choose(rules: list[Rule], split: Split, req: RouteRequest, available: set[str]) -> Route:
    """Rules whose version is not available (not loaded, retired) are passed over."""
    for rule in rules:
        if rule.version in available and rule.matches(req):
            return Route(rule.version, f"rule:{rule.name}")
    canary = split.canary
    if canary is not None and canary in available and (
            req.tenant in split.tenants or bucket(canary, req) < split.share):
        return Route(canary, "canary")
    return Route(split.live, "live")


def parse_rule(raw: object) -> Rule:
    """A rule from JSON, or RuleError naming the field at fault."""
    if not isinstance(raw, dict):
        raise RuleError("a rule must be an object", "rules")
    unknown = sorted(set(raw) - set(RULE_FIELDS))
    if unknown:
        raise RuleError(f"unknown rule field {unknown[0]!r}; known: {', '.join(RULE_FIELDS)}", unknown[0])
    for name in ("name", "version"):
        if not isinstance(raw.get(name), str) or not raw[name]:
            raise RuleError(f"a rule needs a non-empty string {name!r}", name)
    if raw.get("tenant") is not None and not isinstance(raw["tenant"], str):
        raise RuleError("'tenant' must be a string or null", "tenant")
    if raw.get("kind") is not None and raw["kind"] not in KINDS:
        raise RuleError(f"'kind' must be one of {', '.join(KINDS)} or null", "kind")
    for name in ("min_prompt_tokens", "max_prompt_tokens"):
        value = raw.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise RuleError(f"'{name}' must be a non-negative integer or null", name)
    return Rule(**{k: raw.get(k) for k in RULE_FIELDS})


def parse_rules(raw: object) -> list[Rule]:
    if not isinstance(raw, list):
        raise RuleError("'rules' must be a list", "rules")
    rules = [parse_rule(r) for r in raw]
    names = [r.name for r in rules]
    if len(set(names)) != len(names):
        raise RuleError("rule names must be unique", "name")
    return rules
