"""OpenAI's Responses API (``POST /v1/responses``) as cocoon speaks it: the request with its input items, tools
and text format, and the response object and stream events, as pydantic models beside ``protocol.openai``'s.

cocoon serves a response as one chat completion: ``ResponsesRequest.chat_request()`` translates the request onto
the chat path, which seals, routes and pays for it; the sidecar writes the answer back as these objects. cocoon
keeps nothing, so every field that needs a stored response or conversation is refused. Every field:

- honoured: ``model``; ``input`` (a string, or messages, ``function_call`` and ``function_call_output`` items);
  ``instructions`` (a leading system message); ``tools`` (functions); ``tool_choice``; ``parallel_tool_calls``;
  ``text`` (``format``, ``verbosity``) and the top-level ``verbosity`` the SDK's ``parse`` sends;
  ``max_output_tokens``; ``temperature``; ``top_p``; ``top_logprobs`` and ``include``
  ``message.output_text.logprobs``; ``metadata`` (echoed in the response, never sealed to a worker); ``user``,
  ``safety_identifier``, ``prompt_cache_key`` and ``reasoning.effort`` (sealed as on chat); ``stream``;
  COCOON's ``max_coefficient``/``timeout`` and OpenRouter's ``provider``, as on chat.
- accepted, with nothing to do: ``store`` false or omitted (OpenAI's default is true, but the SDK sends nothing;
  nothing is stored either way), ``background`` false, ``truncation`` "disabled", ``service_tier``
  auto/default, ``reasoning.summary`` auto, ``prompt_cache_retention`` in_memory, ``max_tool_calls`` (it bounds
  built-in tools; there are none), ``include`` ``reasoning.encrypted_content`` (no reasoning items are made),
  ``stream_options.include_obfuscation`` (the seal pads chunks already).
- refused with a 400 naming the field: ``store`` true, ``previous_response_id``, ``conversation``, ``prompt``,
  ``background`` true, ``truncation`` auto, other service tiers, reasoning summaries, 24h cache retention, tools
  and tool choices other than functions, other ``include`` values, ``item_reference``, reasoning and built-in
  tool items, input files and audio, image file ids; and any field OpenAI does not define.
"""

from cocoon.protocol.openai_responses.objects import (
    ArgumentsDeltaEvent,
    ArgumentsDoneEvent,
    ContentPartEvent,
    FunctionToolCall,
    IncompleteDetails,
    InputTokensDetails,
    LifecycleEvent,
    OutputItem,
    OutputItemEvent,
    OutputLogprob,
    OutputMessage,
    OutputText,
    OutputTokensDetails,
    OutputTopLogprob,
    Response,
    ResponseError,
    ResponseUsage,
    StreamEvent,
    TextDeltaEvent,
    TextDoneEvent,
)
from cocoon.protocol.openai_responses.request import (
    FunctionChoice,
    FunctionTool,
    ReasoningConfig,
    ResponsesRequest,
    TextConfig,
)

__all__ = [
    "ArgumentsDeltaEvent",
    "ArgumentsDoneEvent",
    "ContentPartEvent",
    "FunctionChoice",
    "FunctionTool",
    "FunctionToolCall",
    "IncompleteDetails",
    "InputTokensDetails",
    "LifecycleEvent",
    "OutputItem",
    "OutputItemEvent",
    "OutputLogprob",
    "OutputMessage",
    "OutputText",
    "OutputTokensDetails",
    "OutputTopLogprob",
    "ReasoningConfig",
    "Response",
    "ResponseError",
    "ResponseUsage",
    "ResponsesRequest",
    "StreamEvent",
    "TextConfig",
    "TextDeltaEvent",
    "TextDoneEvent",
]
