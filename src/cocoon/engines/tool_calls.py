"""Tool calls for a model that only writes text, in the Hermes/Qwen format that open models are trained on.

The tools are shown in a system message as JSON between ``<tools>`` and ``</tools>``; a call is written as
``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``. Earlier calls and their results (``tool``
messages, as ``<tool_response>`` in a user turn) are rendered the same way, all of it as message text, so the
chat templates need no tool role and a user still cannot forge a turn. ``calls_rule`` holds the output to such
calls; for ``tool_choice`` "auto", ``text_or_calls`` lets the model write text and turn to calls at any point by
writing ``<tool_call>``, from which the calls' grammar holds (one decode, no second pass); ``ToolCallReader``
reads the output back into text and calls.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass

from cocoon.engines.base import ChatMessage, GenerationRequest, ToolCallDelta
from cocoon.engines.grammar import Grammar, char_class, literal, schema_rule

CALL_OPEN = "<tool_call>"
CALL_CLOSE = "</tool_call>"
_HEADER = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*(?=\S)')
_ARGUMENTS = '"arguments": '
_END = re.compile(r"\}\s*" + re.escape(CALL_CLOSE))


def call_text(name: str, arguments: str) -> str:
    """A call as the model writes it (and as the grammar makes it write it)."""
    return f'{CALL_OPEN}\n{{"name": {json.dumps(name, ensure_ascii=False)}, "arguments": {arguments}}}\n{CALL_CLOSE}'


def tools_prompt(request: GenerationRequest) -> str:
    """The system text that offers ``request.tools`` and says how to call them under its ``tool_choice``."""
    signatures = "\n".join(
        json.dumps(
            {
                "type": "function",
                "function": {"name": t.name, "description": t.description, "parameters": dict(t.parameters)},
            },
            ensure_ascii=False,
        )
        for t in request.tools
    )
    if request.tool_choice == "function":
        must = f"Call the function {request.tool_name} now."
    elif request.tool_choice == "required":
        must = "Call at least one function now." if request.parallel_tool_calls else "Call one function now."
    else:
        must = "Call a function only when it helps; otherwise answer in plain text."
    if not request.parallel_tool_calls:
        must += " Make one call at most."
    return (
        "You can call functions. Their signatures, as JSON, are between <tools> and </tools>:\n"
        f"<tools>\n{signatures}\n</tools>\n\n"
        f"To call a function, write its name and arguments as a JSON object between {CALL_OPEN} and {CALL_CLOSE}:\n"
        f'{CALL_OPEN}\n{{"name": <function name>, "arguments": <arguments as a JSON object>}}\n{CALL_CLOSE}\n'
        f"{must}"
    )


def chat_messages(request: GenerationRequest) -> tuple[ChatMessage, ...]:
    """``request.messages`` as plain system, user and assistant text: the tools offered (a system message, or
    the end of the first one), the assistant's earlier calls in the call format, and each run of ``tool``
    messages as one user turn of ``<tool_response>`` blocks."""
    assert request.messages is not None
    out: list[ChatMessage] = []
    for i, m in enumerate(request.messages):
        if m.role == "tool":
            response = f"<tool_response>\n{m.content}\n</tool_response>"
            if i > 0 and request.messages[i - 1].role == "tool":  # results of one turn's calls: one user turn
                out[-1] = ChatMessage("user", f"{out[-1].content}\n{response}")
            else:
                out.append(ChatMessage("user", response))
        elif m.role == "assistant" and m.tool_calls:
            calls = "\n".join(call_text(c.name, c.arguments) for c in m.tool_calls)
            out.append(ChatMessage("assistant", f"{m.content}\n{calls}" if m.content else calls))
        else:
            out.append(ChatMessage(m.role, m.content))
    if request.wants_tools:
        offer = tools_prompt(request)
        if out and out[0].role in ("system", "developer"):
            out[0] = ChatMessage(out[0].role, f"{out[0].content}\n\n{offer}")
        else:
            out.insert(0, ChatMessage("system", offer))
    return tuple(out)


def calls_rule(grammar: Grammar, request: GenerationRequest, *, opened: bool = False) -> str:
    """The rule of the calls ``request`` allows (the named function only, once, for ``tool_choice`` "function";
    one call unless ``parallel_tool_calls``), each call's arguments held to its parameters' schema. With ``opened``,
    the rule starts right after the first call's ``<tool_call>`` (the free text of "auto" wrote it).

    Raises ``BadRequest(param="tools")`` for a parameters schema the grammar cannot take (see ``grammar.py``).
    """
    alternatives = []
    for i, tool in enumerate(request.tools):
        if request.tool_choice == "function" and tool.name != request.tool_name:
            continue
        where = f"tools[{i}].function.parameters"
        parameters = dict(tool.parameters)
        if not {"type", "$ref", "anyOf", "oneOf", "allOf", "enum", "const"} & set(parameters):
            parameters["type"] = "object"  # arguments are an object, whatever else the schema leaves open
        arguments = schema_rule(grammar, parameters, strict=tool.strict, param="tools", where=where)
        name = json.dumps(tool.name, ensure_ascii=False)
        alternatives.append(f"{literal(name + ', ' + _ARGUMENTS)} {arguments}")
    opening, closing = literal('\n{"name": '), literal("}\n" + CALL_CLOSE)
    tail = grammar.add("call-tail", f"{opening} ({' | '.join(alternatives)}) {closing}")
    call = grammar.add("call", f"{literal(CALL_OPEN)} {tail}")
    # A named function is called once (as vLLM reads a named tool_choice): a second call of the same function
    # is what a small model writes next, and cut off at max_tokens it makes the answer look truncated.
    parallel = request.parallel_tool_calls and request.tool_choice != "function"
    more = f' ("\\n" {call})*' if parallel else ""
    return grammar.add("calls", f"{tail if opened else call}{more}")


def text_or_calls(grammar: Grammar, request: GenerationRequest) -> str:
    """The rule of "auto": any text, and once it writes ``<tool_call>``, calls (``calls_rule``) to the end.

    The text is matched state by state of the marker (``text-k``: its first k characters just written), so it
    cannot hold the marker but as the start of a call; any state may end the answer.
    """
    calls = calls_rule(grammar, request, opened=True)
    states = [grammar.reserve(f"text-{k}") for k in range(len(CALL_OPEN))]
    for k, state in enumerate(states):
        expected = CALL_OPEN[k]
        then = states[k + 1] if k + 1 < len(states) else calls
        choices = [f"{char_class(expected + '<', negated=True)} {states[0]}", f"{literal(expected)} {then}"]
        if expected != "<":
            choices.append(f'"<" {states[1]}')
        grammar.define(state, "| " + " | ".join(choices))  # the empty choice first: the answer may end here
    return states[0]


@dataclass(slots=True)
class ToolCallReader:
    """Reads generated text back into text and ``ToolCallDelta`` pieces (``tokens`` 0: the engine counts them).

    ``feed`` takes each new piece of text and returns what is known now: text outside calls, a call's opening
    piece (``call_<24 hex>`` id, name) once its name is written, then its arguments as they come. Text that may
    be the start of ``<tool_call>`` is held back, and so is a closing brace until it proves not to end the call.
    """

    calls: int = 0
    _buffer: str = ""
    _state: str = "text"  # "text", "head" (after <tool_call>, before the arguments), "arguments"

    def feed(self, text: str) -> list[str | ToolCallDelta]:
        self._buffer += text
        out: list[str | ToolCallDelta] = []
        while True:
            if self._state == "text":
                start = self._buffer.find(CALL_OPEN)
                if start < 0:
                    keep = _partial_suffix(self._buffer, CALL_OPEN)
                    self._text(out, self._buffer[: len(self._buffer) - keep])
                    self._buffer = self._buffer[len(self._buffer) - keep :]
                    return out
                self._text(out, self._buffer[:start])
                self._buffer, self._state = self._buffer[start + len(CALL_OPEN) :], "head"
            elif self._state == "head":
                match = _HEADER.match(self._buffer)
                if match is None:
                    return out
                name = json.loads(f'"{match[1]}"')
                out.append(ToolCallDelta(self.calls, id=f"call_{secrets.token_hex(12)}", name=name))
                self._buffer, self._state = self._buffer[match.end() :], "arguments"
            else:
                end = _END.search(self._buffer)
                if end is None:
                    brace = self._buffer.rfind("}")
                    keep = brace if brace >= 0 and _may_close(self._buffer[brace + 1 :]) else len(self._buffer)
                    self._arguments(out, self._buffer[:keep])
                    self._buffer = self._buffer[keep:]
                    return out
                self._arguments(out, self._buffer[: end.start()])
                self._buffer, self._state = self._buffer[end.end() :], "text"
                self.calls += 1

    def close(self) -> list[str | ToolCallDelta]:
        """What is left when generation ends: held-back text, or the arguments of a call cut short."""
        out: list[str | ToolCallDelta] = []
        if self._state == "text":
            self._text(out, self._buffer)
        elif self._state == "arguments":
            self._arguments(out, self._buffer)
            self.calls += 1
        self._buffer = ""
        return out

    def _text(self, out: list[str | ToolCallDelta], text: str) -> None:
        if self.calls:  # between and after calls only the grammar's separators: no content
            text = text.strip()
        if text:
            out.append(text)

    def _arguments(self, out: list[str | ToolCallDelta], text: str) -> None:
        if text:
            out.append(ToolCallDelta(self.calls, arguments=text))


def _may_close(rest: str) -> bool:
    """Whether what follows a closing brace may still grow into the end of the call."""
    return CALL_CLOSE.startswith(rest.lstrip())


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``marker``."""
    for k in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-k:]):
            return k
    return 0
