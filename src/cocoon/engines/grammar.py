"""JSON Schema as a llama.cpp grammar (GBNF), so that the sampler lets the model write only JSON the schema accepts.

``Grammar`` collects rules; ``schema_rule`` adds the rules of one schema (its ``$defs``/``definitions`` resolved
within it) and names the rule that matches its values. Supported: ``type`` (object, array, string, number,
integer, boolean, null, or a list of them), ``properties``/``required``/``additionalProperties``, ``items`` with
small ``minItems``/``maxItems``, ``enum``, ``const``, ``anyOf``/``oneOf``/``allOf``, ``$ref``, string lengths,
``minimum`` 0 or 1; a ``format`` is written as a plain string. In strict mode every property is written and
no other; a keyword the grammar cannot enforce (``pattern``, ``maximum``, …) is then a ``BadRequest`` naming
the request field, and without strict it is left to the model (OpenAI's non-strict schemas are best effort too).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from typing import Any

from cocoon.errors import BadRequest

log = logging.getLogger(__name__)

MAX_REPEAT = 100  # minItems, maxItems, minLength, maxLength: the grammar spells repetitions out
# Whitespace between JSON tokens: none, a space, or a new line with some indentation, never unbounded (a small
# model given free whitespace can loop on it until max_tokens).
_PRIMITIVES: dict[str, tuple[str, tuple[str, ...]]] = {
    "ws": (r'| " " | "\n" [ \t]{0,16}', ()),
    "char": (r'[^"\\\x00-\x1f] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4})', ()),
    "string": (r'"\"" char* "\""', ("char",)),
    "integer": (r'"-"? ("0" | [1-9] [0-9]{0,15})', ()),
    "number": (r'integer ("." [0-9]{1,16})? ([eE] [-+]? [0-9]{1,3})?', ("integer",)),
    "boolean": (r'"true" | "false"', ()),
    "null": (r'"null"', ()),
    "value": (
        r"object | array | string | number | boolean | null",
        ("object", "array", "string", "number", "boolean", "null"),
    ),
    "member": (r'string ws ":" ws value ws', ("string", "ws", "value")),
    "object": (r'"{" ws (member ("," ws member)*)? "}"', ("member", "ws")),
    "array": (r'"[" ws (value ws ("," ws value ws)*)? "]"', ("value", "ws")),
}
_ANNOTATIONS = frozenset(
    {"title", "description", "default", "examples", "$schema", "$id", "$comment", "deprecated", "readOnly"}
    | {"writeOnly", "discriminator", "contentEncoding", "contentMediaType", "$defs", "definitions"}
)
_UNENFORCEABLE = frozenset(
    {"pattern", "maximum", "exclusiveMaximum", "multipleOf", "uniqueItems", "minProperties", "maxProperties"}
    | {"patternProperties", "propertyNames", "prefixItems", "additionalItems", "contains", "minContains"}
    | {"maxContains", "not", "if", "then", "else", "dependentRequired", "dependentSchemas", "dependencies"}
    | {"unevaluatedProperties", "unevaluatedItems", "$dynamicRef", "$recursiveRef"}
)
_TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")


def literal(text: str) -> str:
    """``text`` as a GBNF string literal."""
    escaped = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
    out = [escaped.get(ch) or (f"\\x{ord(ch):02x}" if ord(ch) < 0x20 else ch) for ch in text]
    return '"' + "".join(out) + '"'


def char_class(chars: str, *, negated: bool = False) -> str:
    """A GBNF character class of ``chars`` (each written as a hex escape, so none is special)."""
    return "[" + ("^" if negated else "") + "".join(f"\\x{ord(ch):02x}" for ch in chars) + "]"


def json_literal(value: Any) -> str:
    """The JSON text of ``value`` as a GBNF literal: what the model must write for a ``const`` or enum member."""
    return literal(json.dumps(value, ensure_ascii=False))


class Grammar:
    """GBNF rules under construction; ``text(root)`` is the grammar whose start rule is the expression ``root``."""

    def __init__(self) -> None:
        self._rules: dict[str, str] = {}

    def primitive(self, name: str) -> str:
        """The name of a shared JSON rule (``ws``, ``string``, ``number``, ``value``, ``object``, …), added once."""
        if name not in self._rules:
            body, needs = _PRIMITIVES[name]
            self._rules[name] = body
            for need in needs:
                self.primitive(need)
        return name

    def add(self, hint: str, body: str) -> str:
        """Add a rule named after ``hint`` (made unique) and return its name."""
        name = self.reserve(hint)
        self._rules[name] = body
        return name

    def reserve(self, hint: str) -> str:
        """A fresh rule name after ``hint``, to be defined later with ``define`` (recursive rules)."""
        base = re.sub(r"[^A-Za-z0-9]+", "-", hint).strip("-") or "rule"
        name, n = base, 1
        while name in self._rules or name in _PRIMITIVES or name == "root":
            n += 1
            name = f"{base}-{n}"
        self._rules[name] = ""
        return name

    def define(self, name: str, body: str) -> None:
        self._rules[name] = body

    def text(self, root: str) -> str:
        lines = [f"root ::= {root}"] + [f"{name} ::= {body}" for name, body in self._rules.items()]
        return "\n".join(lines) + "\n"


def schema_rule(grammar: Grammar, schema: Any, *, strict: bool, param: str, where: str) -> str:
    """Add the rules of JSON values that ``schema`` accepts to ``grammar``; return the name of their rule.

    ``where`` names the schema in messages (``response_format.json_schema.schema``); ``BadRequest(param=param)``
    when the schema is malformed, or uses a keyword the grammar cannot enforce while ``strict``.
    """
    return _Converter(grammar, schema, strict, param).rule(schema, where, "schema")


class _Converter:
    def __init__(self, grammar: Grammar, document: Any, strict: bool, param: str) -> None:
        self.grammar, self.document, self.strict, self.param = grammar, document, strict, param
        self.refs: dict[str, str] = {}

    def refuse(self, where: str, problem: str) -> BadRequest:
        return BadRequest(f"{where}: {problem}", param=self.param)

    def rule(self, schema: Any, where: str, hint: str) -> str:
        if schema is True or schema == {}:
            return self.grammar.primitive("value")
        if not isinstance(schema, Mapping):
            raise self.refuse(where, "a schema must be an object (or true)")
        ref = schema.get("$ref")
        if isinstance(ref, str) and not _constraining(schema, "$ref"):
            if ref not in self.refs:  # named before it is built: a recursive schema refers to itself
                self.refs[ref] = self.grammar.reserve(ref.rsplit("/", 1)[-1])
                self.grammar.define(self.refs[ref], self.expression(self.resolve(ref, where), ref, ref))
            return self.refs[ref]
        return self.grammar.add(hint, self.expression(schema, where, hint))

    def expression(self, schema: Mapping[str, Any], where: str, hint: str) -> str:
        for keyword in schema:
            if keyword in _UNENFORCEABLE:
                self.unenforceable(where, keyword)
        if "$ref" in schema:
            ref = schema["$ref"]
            if not isinstance(ref, str):
                raise self.refuse(where, "$ref must be a string")
            rest = {k: v for k, v in schema.items() if k != "$ref"}
            return self.expression(self.merged([self.resolve(ref, where), rest], where), where, hint)
        if "allOf" in schema:
            parts = _schemas(schema["allOf"], where, "allOf", self)
            rest = {k: v for k, v in schema.items() if k != "allOf"}
            resolved = [self.resolve(p["$ref"], where) if set(p) == {"$ref"} else p for p in parts]
            return self.expression(self.merged([*resolved, rest], where), where, hint)
        for keyword in ("anyOf", "oneOf"):
            if keyword in schema:
                rest = {k: v for k, v in schema.items() if k != keyword and k not in _ANNOTATIONS}
                alternatives = _schemas(schema[keyword], where, keyword, self)
                return " | ".join(
                    self.rule({**rest, **alt} if rest else alt, f"{where}.{keyword}[{i}]", f"{hint}-{i}")
                    for i, alt in enumerate(alternatives)
                )
        if "const" in schema:
            return json_literal(schema["const"])
        if "enum" in schema:
            values = schema["enum"]
            if not isinstance(values, list) or not values:
                raise self.refuse(where, "enum must be a non-empty list")
            return " | ".join(json_literal(v) for v in values)
        kind = schema.get("type")
        if isinstance(kind, list):
            if not kind:
                raise self.refuse(where, "type must not be an empty list")
            return " | ".join(self.rule({**schema, "type": k}, where, f"{hint}-{k}") for k in kind)
        if kind is None:
            if {"properties", "required", "additionalProperties"} & set(schema):
                kind = "object"
            elif {"items", "minItems", "maxItems"} & set(schema):
                kind = "array"
            else:
                return self.grammar.primitive("value")
        if kind not in _TYPES:
            raise self.refuse(where, f"type {kind!r} is not a JSON Schema type; use one of {', '.join(_TYPES)}")
        if kind == "object":
            return self.object(schema, where, hint)
        if kind == "array":
            return self.array(schema, where, hint)
        if kind == "string":
            return self.string(schema, where)
        if kind in ("integer", "number"):
            return self.number(schema, kind, where)
        return self.grammar.primitive(kind)

    def unenforceable(self, where: str, keyword: str) -> None:
        if self.strict:
            raise self.refuse(
                where,
                f"{keyword!r} cannot be enforced by constrained decoding; leave it out of the schema, "
                "or set strict to false to have it as a hint only",
            )
        log.info("schema keyword not enforced (strict is false) keyword=%s where=%s", keyword, where)

    def resolve(self, ref: str, where: str) -> Mapping[str, Any]:
        if ref == "#":
            return _mapping(self.document, where, self)
        match = re.fullmatch(r"#/(\$defs|definitions)/([^/]+)", ref)
        if match is None:
            raise self.refuse(where, f"$ref {ref!r} is not supported; refer to #/$defs/<name> or #/definitions/<name>")
        defs = self.document.get(match[1]) if isinstance(self.document, Mapping) else None
        name = match[2].replace("~1", "/").replace("~0", "~")
        if not isinstance(defs, Mapping) or name not in defs:
            raise self.refuse(where, f"$ref {ref!r} names no schema in {match[1]}")
        return _mapping(defs[name], f"{match[1]}.{name}", self)

    def merged(self, parts: list[Mapping[str, Any]], where: str) -> dict[str, Any]:
        """``allOf`` as one schema: properties and required joined, any other keyword set by at most one part."""
        out: dict[str, Any] = {}
        for part in parts:
            for key, value in part.items():
                if key == "properties" and isinstance(value, Mapping):
                    out[key] = {**out.get(key, {}), **value}
                elif key == "required" and isinstance(value, list):
                    out[key] = [*out.get(key, []), *(v for v in value if v not in out.get(key, []))]
                elif key in out and out[key] != value and key not in _ANNOTATIONS:
                    raise self.refuse(where, f"allOf parts disagree on {key!r}; only object parts can be combined")
                else:
                    out[key] = value
        return out

    def object(self, schema: Mapping[str, Any], where: str, hint: str) -> str:
        properties = schema.get("properties", {})
        if not isinstance(properties, Mapping):
            raise self.refuse(where, "properties must be an object")
        required = schema.get("required", [])
        if not isinstance(required, list) or not all(isinstance(name, str) for name in required):
            raise self.refuse(where, "required must be a list of property names")
        fields = dict(properties) | {name: True for name in required if name not in properties}
        must = set(fields) if self.strict else set(required)
        extra = schema.get("additionalProperties")
        ws = self.grammar.primitive("ws")
        members: dict[str, str] = {}
        for name, sub in fields.items():
            value = self.rule(sub, f"{where}.properties.{name}", f"{hint}-{name}")
            members[name] = f'{json_literal(name)} {ws} ":" {ws} {value} {ws}'
        # Properties go in their declared order and optional ones may be left out. ``first`` (a rule) is the rest
        # of the object while nothing is written yet, ``after`` once something is (so it starts with a comma).
        after: str | None = None
        first: str | None = None
        if extra not in (None, False) and not self.strict:
            value = self.grammar.primitive("value") if extra is True else self.rule(extra, where, f"{hint}-extra")
            string = self.grammar.primitive("string")
            member = self.grammar.add(f"{hint}-extra", f'{string} {ws} ":" {ws} {value} {ws}')
            after = self.grammar.add(f"{hint}-extras", f'("," {ws} {member})*')
            first = f"({member} {after})?"
        entries = list(members.items())
        for i in range(len(entries) - 1, -1, -1):
            name, member = entries[i]
            tail = f" {after}" if after else ""
            if name in must:
                first = f"{member}{tail}"
            else:
                first = f"({member}{tail} | {first})" if first else f"({member}{tail})?"
            if i > 0:
                comma = f'"," {ws} {member}' if name in must else f'("," {ws} {member})?'
                after = self.grammar.add(f"{hint}-after-{name}", f"{comma}{tail}")
        return f'"{{" {ws} {first} "}}"' if first else f'"{{" {ws} "}}"'

    def array(self, schema: Mapping[str, Any], where: str, hint: str) -> str:
        items = schema.get("items", True)
        if isinstance(items, list):
            self.unenforceable(where, "items as a list")
            items = True
        item = self.rule(items, f"{where}.items", f"{hint}-item")
        low, high = self.bounds(schema, "minItems", "maxItems", where)
        ws = self.grammar.primitive("ws")
        if high == 0:
            return f'"[" {ws} "]"'
        more = f'("," {ws} {item} {ws}){_repeat(max(low - 1, 0), None if high is None else high - 1)}'
        if low == 0:
            return f'"[" {ws} ({item} {ws} {more})? "]"'
        return f'"[" {ws} {item} {ws} {more} "]"'

    def string(self, schema: Mapping[str, Any], where: str) -> str:
        low, high = self.bounds(schema, "minLength", "maxLength", where)
        return f'"\\"" {self.grammar.primitive("char")}{_repeat(low, high)} "\\""'

    def number(self, schema: Mapping[str, Any], kind: str, where: str) -> str:
        low = schema.get("minimum")
        above = schema.get("exclusiveMinimum")
        if low is None and above is None:
            return self.grammar.primitive(kind)
        digits = "[1-9] [0-9]{0,15}"
        if kind == "integer" and (low == 1 or above == 0):
            return digits
        if low == 0 and above is None:
            if kind == "integer":
                return f'"0" | {digits}'
            return f'("0" | {digits}) ("." [0-9]{{1,16}})? ([eE] [-+]? [0-9]{{1,3}})?'
        self.unenforceable(where, "minimum" if low is not None else "exclusiveMinimum")
        return self.grammar.primitive(kind)

    def bounds(self, schema: Mapping[str, Any], low_key: str, high_key: str, where: str) -> tuple[int, int | None]:
        low, high = schema.get(low_key, 0), schema.get(high_key)
        if not isinstance(low, int) or low < 0 or (high is not None and (not isinstance(high, int) or high < low)):
            raise self.refuse(where, f"{low_key} and {high_key} must be integers with 0 <= {low_key} <= {high_key}")
        if low > MAX_REPEAT:
            self.unenforceable(where, f"{low_key} above {MAX_REPEAT}")
            low = 0
        if high is not None and high > MAX_REPEAT:
            self.unenforceable(where, f"{high_key} above {MAX_REPEAT}")
            high = None
        return low, high


def _repeat(low: int, high: int | None) -> str:
    if high is None:
        return {0: "*", 1: "+"}.get(low, f"{{{low},}}")
    if (low, high) == (0, 1):
        return "?"
    return f"{{{low}}}" if low == high else f"{{{low},{high}}}"


def _constraining(schema: Mapping[str, Any], besides: str) -> bool:
    return any(key != besides and key not in _ANNOTATIONS for key in schema)


def _mapping(schema: Any, where: str, converter: _Converter) -> Mapping[str, Any]:
    if schema is True:
        return {}
    if not isinstance(schema, Mapping):
        raise converter.refuse(where, "a schema must be an object (or true)")
    return schema


def _schemas(value: Any, where: str, keyword: str, converter: _Converter) -> list[Mapping[str, Any]]:
    if not isinstance(value, list) or not value:
        raise converter.refuse(where, f"{keyword} must be a non-empty list of schemas")
    return [_mapping(item, f"{where}.{keyword}", converter) for item in value]
