"""Errors rebuilt from the OpenAI-shaped bodies other cocoon processes send."""

from __future__ import annotations

import pytest

from cocoon.errors import CocoonError, _all_subclasses


@pytest.mark.parametrize("error", _all_subclasses(CocoonError), ids=lambda cls: cls.__name__)
def test_every_error_comes_back_from_the_wire_as_itself(error: type[CocoonError]) -> None:
    body = {"error": {"message": "it went wrong", "type": error.type, "param": "model", "code": error.code}}

    rebuilt = CocoonError.from_openai(error.status, body)

    assert rebuilt.status == error.status and rebuilt.code == error.code
    assert str(rebuilt) == "it went wrong" and rebuilt.param == "model"
