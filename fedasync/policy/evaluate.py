"""IAM's decision for one identity's policies and one request, as pure data.

The semantics are IAM's policy evaluation logic for a single identity-based policy set
(no SCPs, boundaries, sessions or resource policies):
- an explicit Deny that matches wins; otherwise an Allow that matches allows; otherwise
  the request is implicitly denied;
- a statement matches when its Action (or NotAction), its Resource (or NotResource) and
  every condition match; `*` and `?` are globs, and `*` crosses `/` and `:`;
- actions compare case-insensitively, resource ARNs case-sensitively;
- conditions: operators AND together, keys within an operator AND together, the values
  of one key OR together; a key missing from the request fails a positive operator,
  passes a negated one (`StringNotEquals`, `StringNotLike`, `ArnNotLike`, ...), passes
  any `...IfExists` operator; `ForAllValues:` holds when every request value matches
  (so also for a missing key or an empty set), `ForAnyValue:` when at least one does;
  `Null: true` holds when the key is missing, `Null: false` when it is present.

An operator this module does not model raises `UnsupportedConditionError`: a policy must never
be judged by a rule silently ignored.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

ContextValue = str | Sequence[str]
Context = Mapping[str, ContextValue]


class UnsupportedConditionError(ValueError):
    """A condition operator this evaluator does not model."""


@lru_cache(maxsize=4096)
def _glob_regex(pattern: str, case_sensitive: bool) -> re.Pattern[str]:
    parts = (".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile("".join(parts), 0 if case_sensitive else re.IGNORECASE)


def glob(pattern: str, value: str, *, case_sensitive: bool = True) -> bool:
    """IAM's wildcard match: `*` any run of characters (also `/`), `?` one character."""
    return _glob_regex(pattern, case_sensitive).fullmatch(value) is not None


def _tuple(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, list | tuple):
        return tuple(str(v) for v in value)
    return (str(value),)


@dataclass(frozen=True)
class Statement:
    """One statement of a policy document, its values as strings (intrinsics resolved)."""

    effect: Literal["Allow", "Deny"]
    actions: tuple[str, ...] = ()
    not_actions: tuple[str, ...] | None = None
    resources: tuple[str, ...] = ()
    not_resources: tuple[str, ...] | None = None
    conditions: Mapping[str, Mapping[str, tuple[str, ...]]] = field(default_factory=dict)
    sid: str | None = None
    origin: str = ""  # where it comes from, e.g. the role's logical id

    @classmethod
    def from_json(cls, doc: Mapping[str, Any], origin: str = "") -> Statement:
        effect = doc["Effect"]
        if effect not in ("Allow", "Deny"):
            raise ValueError(f"statement effect {effect!r} is neither Allow nor Deny")
        conditions = {
            operator: {key: _tuple(values) for key, values in clauses.items()}
            for operator, clauses in doc.get("Condition", {}).items()
        }
        return cls(
            effect=effect,
            actions=_tuple(doc.get("Action")),
            not_actions=_tuple(doc["NotAction"]) if "NotAction" in doc else None,
            resources=_tuple(doc.get("Resource")),
            not_resources=_tuple(doc["NotResource"]) if "NotResource" in doc else None,
            conditions=conditions,
            sid=doc.get("Sid"),
            origin=origin,
        )

    @property
    def name(self) -> str:
        where = f"{self.origin}:" if self.origin else ""
        return f"{where}{self.sid or '/'.join(self.actions or self.not_actions or ())}"

    def covers(self, action: str, resource: str) -> bool:
        """Action and resource match, conditions aside."""
        if self.not_actions is not None:
            action_ok = not any(glob(a, action, case_sensitive=False) for a in self.not_actions)
        else:
            action_ok = any(glob(a, action, case_sensitive=False) for a in self.actions)
        if not action_ok:
            return False
        if self.not_resources is not None:
            return not any(glob(r, resource) for r in self.not_resources)
        return any(glob(r, resource) for r in self.resources)

    def failed_conditions(self, context: Context) -> list[str]:
        """The `operator key` pairs that do not hold for this request (empty: all hold)."""
        return [
            f"{operator} {key} {list(expected)}"
            for operator, clauses in self.conditions.items()
            for key, expected in clauses.items()
            if not condition_holds(operator, key, expected, context)
        ]


@dataclass(frozen=True)
class Request:
    principal: str
    action: str
    resource: str
    context: Context = field(default_factory=dict)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    allowed_by: tuple[Statement, ...] = ()
    denied_by: Statement | None = None
    # Statements whose action and resource match but whose conditions failed, and why.
    near_misses: tuple[tuple[Statement, tuple[str, ...]], ...] = ()


def evaluate(statements: Iterable[Statement], request: Request) -> Decision:
    allows: list[Statement] = []
    misses: list[tuple[Statement, tuple[str, ...]]] = []
    for statement in statements:
        if not statement.covers(request.action, request.resource):
            continue
        failed = statement.failed_conditions(request.context)
        if statement.effect == "Deny" and not failed:
            return Decision(False, denied_by=statement)
        if statement.effect == "Allow":
            if failed:
                misses.append((statement, tuple(failed)))
            else:
                allows.append(statement)
    return Decision(bool(allows), allowed_by=tuple(allows), near_misses=tuple(misses))


def could_allow(statements: Iterable[Statement], action: str, resource: str) -> bool:
    """The over-approximation: whether *some* request context could get `action` on
    `resource` through. Every Allow counts as if its conditions held, and a conditional
    Deny as if it did not apply; so False is a proof that no context whatsoever is
    allowed (what "a client can never write another client's prefix" needs)."""
    covering = [s for s in statements if s.covers(action, resource)]
    if any(s.effect == "Deny" and not s.conditions for s in covering):
        return False
    return any(s.effect == "Allow" for s in covering)


# --- conditions ---------------------------------------------------------------------


def _string_equals(expected: str, actual: str) -> bool:
    return expected == actual


def _string_equals_ignore_case(expected: str, actual: str) -> bool:
    return expected.lower() == actual.lower()


def _string_like(expected: str, actual: str) -> bool:
    return glob(expected, actual)


def _bool(expected: str, actual: str) -> bool:
    return expected.lower() == actual.lower()


def _numeric(compare: str) -> Any:
    def match(expected: str, actual: str) -> bool:
        try:
            a, e = float(actual), float(expected)
        except ValueError:
            return False
        return {
            "Equals": a == e,
            "NotEquals": a != e,
            "LessThan": a < e,
            "LessThanEquals": a <= e,
            "GreaterThan": a > e,
            "GreaterThanEquals": a >= e,
        }[compare]

    return match


# operator -> (value matcher, negated). A negated operator holds when no value matches.
_OPERATORS: dict[str, tuple[Any, bool]] = {
    "StringEquals": (_string_equals, False),
    "StringNotEquals": (_string_equals, True),
    "StringEqualsIgnoreCase": (_string_equals_ignore_case, False),
    "StringNotEqualsIgnoreCase": (_string_equals_ignore_case, True),
    "StringLike": (_string_like, False),
    "StringNotLike": (_string_like, True),
    "ArnEquals": (_string_equals, False),
    "ArnNotEquals": (_string_equals, True),
    "ArnLike": (_string_like, False),
    "ArnNotLike": (_string_like, True),
    "Bool": (_bool, False),
    "NumericEquals": (_numeric("Equals"), False),
    "NumericNotEquals": (_numeric("Equals"), True),
    "NumericLessThan": (_numeric("LessThan"), False),
    "NumericLessThanEquals": (_numeric("LessThanEquals"), False),
    "NumericGreaterThan": (_numeric("GreaterThan"), False),
    "NumericGreaterThanEquals": (_numeric("GreaterThanEquals"), False),
}


def _values(context: Context, key: str) -> tuple[str, ...] | None:
    # Condition key names are case-insensitive.
    for name, value in context.items():
        if name.lower() == key.lower():
            return (value,) if isinstance(value, str) else tuple(value)
    return None


def condition_holds(operator: str, key: str, expected: Sequence[str], context: Context) -> bool:
    actual = _values(context, key)
    if operator == "Null":
        wants_missing = [e.lower() for e in expected] == ["true"]
        return (actual is None or len(actual) == 0) == wants_missing
    quantifier, _, base = operator.rpartition(":")
    if_exists = base.endswith("IfExists")
    base = base.removesuffix("IfExists")
    if base not in _OPERATORS or quantifier not in ("", "ForAllValues", "ForAnyValue"):
        raise UnsupportedConditionError(f"condition operator {operator!r} is not modelled")
    matcher, negated = _OPERATORS[base]

    def one(value: str) -> bool:
        hit = any(matcher(e, value) for e in expected)
        return not hit if negated else hit

    if quantifier == "ForAllValues":
        return all(one(v) for v in actual or ())
    if quantifier == "ForAnyValue":
        return any(one(v) for v in actual or ())
    if actual is None:
        return if_exists or negated
    return any(one(v) for v in actual)
