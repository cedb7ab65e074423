"""JSON Schema as GBNF: what the grammar lets through, checked by llama.cpp's own grammar engine on the bundled
Gemma vocabulary (no model weights evaluated), and what it refuses to build."""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, Field

from cocoon.engines.grammar import Grammar, schema_rule
from cocoon.errors import BadRequest

Accepts = Callable[[str, str], bool]


@pytest.fixture(scope="module")
def accepts(bundled_model_path: Path) -> Iterator[Accepts]:
    """``accepts(grammar, text)``: whether the GBNF ``grammar`` matches all of ``text``, as the sampler sees it."""
    import llama_cpp
    import numpy as np

    llama = llama_cpp.Llama(str(bundled_model_path), vocab_only=True, verbose=False)
    vocab = llama._model.vocab
    cell = np.dtype([("id", np.intc), ("logit", np.single), ("p", np.single)], align=True)

    def allowed(sampler: Any, token: int) -> bool:
        one = np.zeros(1, cell)
        one["id"] = token
        data = llama_cpp.llama_token_data_array(one.ctypes.data_as(llama_cpp.llama_token_data_p), 1, -1, False)
        llama_cpp.llama_sampler_apply(sampler, data)
        return bool(np.isfinite(one["logit"][0]))

    def check(grammar: str, text: str) -> bool:
        sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
        assert sampler, f"llama.cpp cannot parse the grammar:\n{grammar}"
        try:
            for token in llama.tokenize(text.encode(), add_bos=False, special=False):
                if not allowed(sampler, token):  # never accept a refused token: llama.cpp aborts the process
                    return False
                llama_cpp.llama_sampler_accept(sampler, token)
            return allowed(sampler, llama.token_eos())  # the end is allowed once the grammar is done
        finally:
            llama_cpp.llama_sampler_free(sampler)

    yield check
    llama.close()


def gbnf(schema: Any, *, strict: bool = False) -> str:
    grammar = Grammar()
    return grammar.text(schema_rule(grammar, schema, strict=strict, param="response_format", where="schema"))


class Colour(enum.StrEnum):
    red = "red"
    green = "green"


class Line(BaseModel):
    fruit: str
    quantity: int = Field(ge=0)


class Order(BaseModel):
    customer: str
    colour: Colour
    lines: list[Line] = Field(max_length=2)
    note: str | None = None
    parent: Order | None = None  # recursive: a $ref to the schema being defined


ORDER = Order(customer="Alice", colour=Colour.green, lines=[Line(fruit="apple", quantity=2)])


def test_a_pydantic_model_with_a_list_an_enum_and_recursion_accepts_its_own_json(accepts: Accepts) -> None:
    grammar = gbnf(Order.model_json_schema())
    nested = ORDER.model_copy(update={"parent": ORDER, "note": 'says "hi"\n'})

    assert accepts(grammar, ORDER.model_dump_json(exclude_defaults=True))
    assert accepts(grammar, ORDER.model_dump_json(indent=2))
    assert accepts(grammar, nested.model_dump_json())


@pytest.mark.parametrize(
    "wrong",
    [
        '{"customer": "Alice", "lines": []}',  # colour is required
        '{"customer": "Alice", "colour": "blue", "lines": []}',  # not in the enum
        '{"customer": "Alice", "colour": "red", "lines": [], "extra": 1}',  # no additional properties
        '{"customer": "Alice", "colour": "red", "lines": [{"fruit": "fig", "quantity": "2"}]}',  # a string
        '{"customer": "Alice", "colour": "red", "lines": [{"fruit": "fig", "quantity": -2}]}',  # minimum 0
        '{"customer": "A", "colour": "red", "lines": [' + ", ".join(['{"fruit": "f", "quantity": 1}'] * 3) + "]}",
        '{"colour": "red", "customer": "Alice", "lines": []}',  # properties come in their declared order
        '{"customer": "Alice", "colour": "red", "lines": []}  ',  # nothing after the value
        '{"customer":\n\n"Alice", "colour": "red", "lines": []}',  # whitespace is bounded: one new line
    ],
)
def test_json_the_schema_refuses_is_refused(accepts: Accepts, wrong: str) -> None:
    assert not accepts(gbnf(Order.model_json_schema()), wrong)


def test_strict_writes_every_property_and_without_it_optional_ones_may_be_left_out(accepts: Accepts) -> None:
    schema = Line.model_json_schema() | {"properties": {**Line.model_json_schema()["properties"], "ripe": {}}}

    assert accepts(gbnf(schema), '{"fruit": "fig", "quantity": 1}')
    assert not accepts(gbnf(schema, strict=True), '{"fruit": "fig", "quantity": 1}')
    assert accepts(gbnf(schema, strict=True), '{"fruit": "fig", "quantity": 1, "ripe": [true, null]}')


def test_additional_properties_are_allowed_only_when_the_schema_says_so(accepts: Accepts) -> None:
    open_schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "additionalProperties": True}
    typed = {"type": "object", "additionalProperties": {"type": "boolean"}}

    assert accepts(gbnf(open_schema), '{"a": 1, "b": [1, "x"], "c": {}}')
    assert accepts(gbnf(open_schema), '{"b": 2}')
    assert not accepts(gbnf(open_schema, strict=True), '{"a": 1, "b": 2}')
    assert accepts(gbnf(typed), '{"x": true, "y": false}')
    assert not accepts(gbnf(typed), '{"x": 1}')


def test_any_of_const_type_lists_and_string_lengths(accepts: Accepts) -> None:
    schema = {
        "type": "object",
        "properties": {
            "id": {"anyOf": [{"type": "integer"}, {"type": "string", "minLength": 2, "maxLength": 3}]},
            "kind": {"const": "fruit"},
            "weight": {"type": ["number", "null"]},
            "tags": {"type": "array", "items": {"enum": ["a", 1, None]}, "minItems": 1},
        },
        "required": ["id", "kind", "weight", "tags"],
    }
    grammar = gbnf(schema)

    assert accepts(grammar, '{"id": 7, "kind": "fruit", "weight": -1.5e3, "tags": ["a", 1, null]}')
    assert accepts(grammar, '{"id": "ab", "kind": "fruit", "weight": null, "tags": [1]}')
    assert not accepts(grammar, '{"id": "abcd", "kind": "fruit", "weight": null, "tags": [1]}')
    assert not accepts(grammar, '{"id": 7, "kind": "veg", "weight": null, "tags": [1]}')
    assert not accepts(grammar, '{"id": 7, "kind": "fruit", "weight": null, "tags": []}')
    assert not accepts(grammar, '{"id": 07, "kind": "fruit", "weight": 1, "tags": [1]}')


def test_property_names_and_constants_with_quotes_and_unicode_are_written_exactly(accepts: Accepts) -> None:
    key = 'say "hi"\\ \u00e9\u6f22'
    grammar = gbnf({"type": "object", "properties": {key: {"const": {"x": "\n"}}}, "required": [key]})

    assert accepts(grammar, json.dumps({key: {"x": "\n"}}, ensure_ascii=False))


def test_an_empty_schema_and_json_object_take_any_json_object(accepts: Accepts) -> None:
    grammar = Grammar()
    json_object = grammar.text(grammar.primitive("object"))

    assert accepts(gbnf({}), '[1, "two", {"three": null}]')
    assert accepts(json_object, '{"a": [1, 2.5, -3e-2], "b": {"c": "\\u00e9"}, "d": false}')
    assert not accepts(json_object, "[1]")
    assert not accepts(json_object, '{"a": "unterminated}')


@pytest.mark.parametrize(
    ("schema", "named"),
    [
        ({"type": "string", "pattern": "^[a-z]+$"}, "'pattern'"),
        ({"type": "object", "properties": {"n": {"type": "integer", "maximum": 9}}}, "schema.properties.n"),
        ({"type": "array", "uniqueItems": True}, "'uniqueItems'"),
        ({"not": {"type": "null"}}, "'not'"),
        ({"type": "array", "maxItems": 1000}, "maxItems above 100"),
    ],
)
def test_a_keyword_the_grammar_cannot_enforce_is_refused_when_strict(schema: dict[str, Any], named: str) -> None:
    with pytest.raises(BadRequest, match="cannot be enforced") as refused:
        gbnf(schema, strict=True)

    assert refused.value.param == "response_format"
    assert named in str(refused.value)


def test_without_strict_an_unenforceable_keyword_is_a_hint_and_the_rest_holds(accepts: Accepts) -> None:
    grammar = gbnf({"type": "object", "properties": {"n": {"type": "integer", "maximum": 9}}, "required": ["n"]})

    assert accepts(grammar, '{"n": 12}')
    assert not accepts(grammar, '{"n": "12"}')


@pytest.mark.parametrize(
    ("schema", "problem"),
    [
        ({"$ref": "#/$defs/Missing", "$defs": {}}, "names no schema"),
        ({"$ref": "https://example.com/schema.json"}, "is not supported"),
        ({"type": "text"}, "not a JSON Schema type"),
        ({"enum": []}, "non-empty list"),
        ({"type": "object", "properties": []}, "properties must be an object"),
        ({"type": "array", "minItems": 3, "maxItems": 1}, "minItems and maxItems"),
        (False, "must be an object"),
    ],
)
def test_a_malformed_schema_is_a_bad_request_saying_what_is_wrong(schema: Any, problem: str) -> None:
    with pytest.raises(BadRequest, match=problem) as refused:
        gbnf(schema)

    assert refused.value.param == "response_format"
