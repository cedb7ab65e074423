"""The embedded engine: llama.cpp (through llama-cpp-python) on the worker's CPU, the default backend.

One llama.cpp context decodes the sequences of up to ``parallel`` jobs together (``batching.BatchLoop``, on its
own thread); each job hands its events back to the event loop through an asyncio queue. ``llama_cpp`` is
imported only in ``start()``.
"""

from __future__ import annotations

import asyncio
import codecs
import logging
import os
import threading
from collections.abc import AsyncGenerator, Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING

from cocoon.engines.answer_stream import AnswerStream
from cocoon.engines.base import (
    SCORE_MAX_TOKENS,
    Embeddings,
    EngineInfo,
    Finished,
    FinishReason,
    GenerationEvent,
    GenerationRequest,
    SamplingParams,
    ScoreRequest,
    TokenScores,
)
from cocoon.engines.batching import PREFILL_CHUNK, BatchLoop
from cocoon.engines.bundled import bundled_gguf
from cocoon.engines.chat_template import ChatTemplate, chat_template_for
from cocoon.engines.config import EngineSettings
from cocoon.engines.constraints import answer_grammar, refuse_unsupported
from cocoon.engines.gemma_template import GemmaTurns
from cocoon.engines.model_cache import sha256_file
from cocoon.engines.tool_calls import ToolCallReader
from cocoon.errors import BadRequest, CocoonError, ConfigError, ContextLengthExceeded, EngineError
from cocoon.protocol.usage import TokenUsage

if TYPE_CHECKING:
    from llama_cpp import Llama

    from cocoon.engines.sampling import TokenBytes, TokenSampler

log = logging.getLogger(__name__)

_EMBED_BATCH_CAP = 4096  # tokens per embedding input; also the embedding context size


class _Generation:
    """One generation as a ``batching.Task``: samples each next token from its row of the batch, turns tokens
    into events (``AnswerStream``) and ends with ``Finished`` or an error, sent through ``emit`` (thread-safe).

    ``grammar`` (GBNF) constrains the answer, ``tools`` says to read tool calls out of it, ``top_logprobs`` is
    None when no log-probabilities are wanted; ``vocabulary`` gives the ``TokenBytes`` a grammar needs.
    """

    def __init__(
        self,
        llama: Llama,
        tokens: list[int],
        request: GenerationRequest,
        grammar: str | None,
        end_of_turn: int,
        emit: Callable[[GenerationEvent | CocoonError], None],
        cancel: threading.Event,
        vocabulary: Callable[[], TokenBytes],
    ) -> None:
        self.tokens = tokens
        self.cancel = cancel
        self.scope = request.cache_scope
        self._llama = llama
        self._params = request.params
        self._top_logprobs = request.top_logprobs if request.logprobs else None
        self._grammar = grammar
        self._tools = request.wants_tools
        self._end_of_turn = end_of_turn
        self._emit = emit
        self._vocabulary = vocabulary
        self._sampler: TokenSampler | None = None
        self._answer: AnswerStream | None = None
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._cached = 0
        self._completion = 0

    def begin(self, context: object, cached: int) -> None:
        from cocoon.engines.sampling import TokenSampler

        vocabulary = self._vocabulary() if self._grammar is not None else None
        self._sampler = TokenSampler(
            self._llama, self._params, self._top_logprobs, self._grammar, vocabulary, context=context
        )
        self._answer = AnswerStream(self._emit, self._params.stop, ToolCallReader() if self._tools else None)
        self._cached = cached

    def wants(self, position: int) -> bool:
        return position == len(self.tokens) - 1

    def read(self, position: int, index: int) -> int | None:
        import llama_cpp

        sampler, answer = self._sampler, self._answer
        assert sampler is not None and answer is not None
        sampler.at(index)
        token = sampler.next_token()
        self._completion += 1
        if token == self._end_of_turn or llama_cpp.llama_vocab_is_eog(self._llama._model.vocab, token):
            answer.add("")
            self._finish("stop")
            return None
        logprob = sampler.logprob(token) if self._top_logprobs is not None else None
        answer.add(self._utf8.decode(self._llama.detokenize([token])), logprob)
        if answer.stopped:
            self._finish("stop")
            return None
        if self._completion >= self._params.max_tokens:
            self._finish("length")
            return None
        return token

    def _finish(self, reason: FinishReason) -> None:
        assert self._answer is not None
        usage = TokenUsage(len(self.tokens), self._completion, cached_tokens=self._cached)
        self._answer.finish(self._utf8.decode(b"", final=True), reason, usage)

    def end(self, error: CocoonError | None) -> None:
        if self._sampler is not None:
            self._sampler.close()
            self._sampler = None
        if error is not None:
            self._emit(error)  # dropped once cancelled: nobody listens


class _Scoring:
    """A score job as a ``batching.Task``: the prompt and completion evaluated with logits at the positions that
    predict a completion token; each row log-softmaxed as it comes. ``result`` gets (log-probabilities, greedy)."""

    def __init__(self, prompt: list[int], completion: list[int], n_vocab: int, scope: str) -> None:
        self.tokens = prompt + completion
        self.cancel = threading.Event()
        self.scope = scope
        self.result: Future[tuple[list[float], list[bool]]] = Future()
        self._first = len(prompt) - 1  # the logits at position p rate the token at p + 1
        self._n_vocab = n_vocab
        self._context: object = None
        self._logprobs: list[float] = []
        self._greedy: list[bool] = []

    def begin(self, context: object, cached: int) -> None:
        self._context = context

    def wants(self, position: int) -> bool:
        return self._first <= position < len(self.tokens) - 1

    def read(self, position: int, index: int) -> int | None:
        import llama_cpp
        import numpy as np

        pointer = llama_cpp.llama_get_logits_ith(self._context, index)
        row = np.ctypeslib.as_array(pointer, shape=(self._n_vocab,)).astype(np.float64)
        top = float(row.max())
        log_total = top + float(np.log(np.exp(row - top).sum()))
        following = self.tokens[position + 1]
        self._logprobs.append(float(row[following]) - log_total)
        self._greedy.append(int(row.argmax()) == following)
        return None

    def end(self, error: CocoonError | None) -> None:
        if self.result.done():
            return
        if error is None and len(self._logprobs) == len(self.tokens) - 1 - self._first:
            self.result.set_result((self._logprobs, self._greedy))
        else:
            self.result.set_exception(error or EngineError("the score job was cancelled"))


class LlamaCppEngine:
    """Serves a GGUF model with llama.cpp; with ``settings.model_path`` empty, the bundled one of that name
    (SmolLM2-135M-Instruct for ``smollm2-135m-instruct``, else Gemma 3 270M).

    Chat requests use the model's template (``chat_template.py``: Gemma's turns, or the GGUF's own); completions
    use the raw prompt, in which special tokens such as ``<start_of_turn>`` are recognised (as llama.cpp's and
    vLLM's servers do), or the token ids given. Message contents are tokenized as plain text, so a user cannot
    forge turn markers. ``response_format`` and tools are held to by a grammar, images, reasoning and
    ``verbosity`` refused (``constraints.py``).
    """

    def __init__(self, settings: EngineSettings) -> None:
        self._settings = settings
        self._info: EngineInfo | None = None
        self._path: Path | None = None
        self._threads = settings.threads or os.cpu_count() or 1
        self._parallel = settings.parallel or 1
        self._llama: Llama | None = None  # the model, and a small context of its own for tokenizing
        self._loop: BatchLoop | None = None
        self._running: set[threading.Event] = set()
        self._template: ChatTemplate = GemmaTurns(-1)
        self._embedder: Llama | None = None
        self._embed_lock = asyncio.Lock()
        self._vocabulary: TokenBytes | None = None  # read on the first constrained job: most never need it
        self._vocabulary_lock = threading.Lock()

    @property
    def info(self) -> EngineInfo:
        if self._info is None:
            raise EngineError("the llama.cpp engine is not started; call start() first")
        return self._info

    @property
    def shared_prompt_tokens(self) -> int:
        """Prompt tokens copied from a running sequence with the same prefix instead of evaluated, since start."""
        return self._loop.shared_tokens if self._loop is not None else 0

    async def start(self) -> None:
        """Find (or assemble) the GGUF, hash it and load ``parallel`` contexts, all off the event loop.

        Raises ``ConfigError`` when the file is missing or its hash differs from ``settings.model_hash``,
        ``EngineError`` when llama.cpp cannot load it.
        """
        if self._info is not None:
            return
        settings = self._settings
        path = settings.model_path
        if path is None:
            path = await asyncio.to_thread(bundled_gguf, settings.model)
        if not path.is_file():
            raise ConfigError(f"model_path {path} is not a file; point it at a GGUF model or leave it empty")
        model_hash = await asyncio.to_thread(sha256_file, path)
        if settings.model_hash and settings.model_hash.lower() != model_hash:
            raise ConfigError(
                f"{path} has sha256 {model_hash} but the configuration says model_hash = "
                f"{settings.model_hash}; fix model_hash or the file"
            )
        llama, self._loop = await asyncio.to_thread(self._load, path)
        self._llama = llama
        self._template = chat_template_for(llama, path)
        self._path = path
        import llama_cpp

        self._info = EngineInfo(
            model=settings.model,
            model_hash=model_hash,
            context_length=settings.context_length,
            supports_embeddings=settings.embeddings,
            extra={
                "backend": "llama.cpp",
                "chat_template": self._template.name,
                "llama_cpp_python": llama_cpp.__version__,
                "parallel": str(self._parallel),
                "threads": str(self._threads),
            },
        )
        log.info("llama.cpp engine ready model=%s path=%s parallel=%d", settings.model, path, self._parallel)

    def _load(self, path: Path) -> tuple[Llama, BatchLoop]:
        from llama_cpp import Llama

        try:
            llama = Llama(
                str(path),
                n_ctx=PREFILL_CHUNK,
                n_batch=PREFILL_CHUNK,
                n_threads=1,
                verbose=False,
            )
        except (ValueError, RuntimeError) as exc:
            raise EngineError(f"llama.cpp could not load {path}: {exc}; is it a valid GGUF file?") from exc
        try:
            context_length, parallel = self._settings.context_length, self._parallel
            return llama, BatchLoop(llama, parallel=parallel, context_length=context_length, threads=self._threads)
        except BaseException:
            llama.close()
            raise

    async def close(self) -> None:
        """Cancel running jobs, wait for their threads and free every context. Idempotent."""
        for cancel in list(self._running):
            cancel.set()
        if self._loop is not None:
            await asyncio.to_thread(self._loop.close)
            self._loop = None
        if self._llama is not None:
            self._llama.close()
            self._llama = None
        if self._embedder is not None:
            self._embedder.close()
            self._embedder = None
        self._info = None

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationEvent, None]:
        """Stream ``TextDelta`` and ``ToolCallDelta`` events then one ``Finished``; see ``cocoon.engines.base.Engine``.

        Raises ``BadRequest`` naming the field for what this engine cannot do (images, reasoning, an output
        schema it cannot enforce, token ids past the vocabulary), ``ContextLengthExceeded`` when prompt +
        continuation + max_tokens exceed the context length (all before taking a slot), ``EngineError`` when
        llama.cpp fails mid-way.
        """
        info = self.info
        llama, batch = self._llama, self._loop
        assert llama is not None and batch is not None
        if request.params.max_tokens < 1:
            raise BadRequest("max_tokens must be at least 1", param="max_tokens")
        refuse_unsupported(request, info.model)
        grammar = answer_grammar(request)
        tokens = self._template.prompt_tokens(llama, request)
        needed = len(tokens) + request.params.max_tokens
        if needed > info.context_length:
            raise ContextLengthExceeded(
                f"the prompt has {len(tokens)} tokens and max_tokens is {request.params.max_tokens}: "
                f"together {needed}, more than the context length of {info.context_length} tokens; "
                "shorten the prompt or lower max_tokens",
                param="max_tokens",
            )

        loop = asyncio.get_running_loop()
        events: asyncio.Queue[GenerationEvent | CocoonError] = asyncio.Queue()
        cancel = threading.Event()

        def emit(item: GenerationEvent | CocoonError) -> None:
            if cancel.is_set():
                return
            try:
                loop.call_soon_threadsafe(events.put_nowait, item)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                cancel.set()

        def vocabulary() -> TokenBytes:
            return self._token_bytes(llama)

        end_of_turn = self._template.end_of_turn
        self._running.add(cancel)
        try:
            batch.submit(_Generation(llama, tokens, request, grammar, end_of_turn, emit, cancel, vocabulary))
            while True:
                item = await events.get()
                if isinstance(item, CocoonError):
                    raise item
                yield item
                if isinstance(item, Finished):
                    return
        finally:
            # Consumer closed or cancelled us (or we finished): the batch drops the sequence at its next step.
            cancel.set()
            self._running.discard(cancel)

    def _token_bytes(self, llama: Llama) -> TokenBytes:
        from cocoon.engines.sampling import TokenBytes

        with self._vocabulary_lock:
            if self._vocabulary is None:
                self._vocabulary = TokenBytes.of(llama)
            return self._vocabulary

    async def score(self, request: ScoreRequest) -> TokenScores:
        """Log-probabilities of ``request.completion`` after its prompt, from one chunked prefill on a pooled context.

        The prompt is laid out as ``generate`` lays it out; the completion is tokenized as plain text and cut to
        ``SCORE_MAX_TOKENS``. Raises ``ContextLengthExceeded`` when prompt and completion do not fit the context.
        """
        info = self.info
        llama, batch = self._llama, self._loop
        assert llama is not None and batch is not None
        params = SamplingParams(max_tokens=1)
        layout = GenerationRequest(params=params, messages=request.messages, prompt=request.prompt)
        prompt = self._template.prompt_tokens(llama, layout)
        completion = llama.tokenize(request.completion.encode(), add_bos=False, special=False)
        truncated = len(completion) > SCORE_MAX_TOKENS
        completion = completion[:SCORE_MAX_TOKENS]
        if len(prompt) + len(completion) > info.context_length:
            raise ContextLengthExceeded(
                f"the prompt has {len(prompt)} tokens and the completion to score {len(completion)}: more than the "
                f"context length of {info.context_length} tokens; score a shorter one"
            )
        if not completion:
            return TokenScores((), (), prompt_tokens=len(prompt), truncated=truncated)
        task = _Scoring(prompt, completion, llama.n_vocab(), request.cache_scope)
        try:
            batch.submit(task)
            logprobs, greedy = await asyncio.wrap_future(task.result)
        finally:
            task.cancel.set()
        return TokenScores(tuple(logprobs), tuple(greedy), prompt_tokens=len(prompt), truncated=truncated)

    async def embed(self, inputs: Sequence[str | Sequence[int]]) -> Embeddings:
        """One L2-normalized, mean-pooled vector per input, from a second context loaded on first use.

        Raises ``BadRequest`` when embeddings are disabled or ``inputs`` is empty, and
        ``ContextLengthExceeded`` when an input is longer than the embedding context.
        """
        info = self.info
        if not info.supports_embeddings:
            raise BadRequest(f"embeddings are disabled for model {info.model!r}; set embeddings = true")
        if not inputs:
            raise BadRequest("input is empty; send at least one string to embed", param="input")
        async with self._embed_lock:
            if self._embedder is None:
                self._embedder = await asyncio.to_thread(self._load_embedder)
            return await asyncio.to_thread(self._embed_blocking, self._embedder, inputs)

    def _load_embedder(self) -> Llama:
        from llama_cpp import LLAMA_POOLING_TYPE_MEAN, Llama

        size = min(self._settings.context_length, _EMBED_BATCH_CAP)
        return Llama(
            str(self._path),
            embedding=True,
            pooling_type=LLAMA_POOLING_TYPE_MEAN,
            n_ctx=size,
            n_batch=size,
            n_ubatch=size,
            n_threads=self._settings.threads or os.cpu_count() or 1,
            verbose=False,
        )

    def _embed_blocking(self, embedder: Llama, inputs: Sequence[str | Sequence[int]]) -> Embeddings:
        """Texts in llama-cpp-python's batches; token-id inputs one by one, evaluated as given (no BOS added)."""
        limit, vocabulary = embedder.n_batch, embedder.n_vocab()
        for index, item in enumerate(inputs):
            if isinstance(item, str):
                n = len(embedder.tokenize(item.encode(), add_bos=True, special=False))
            else:
                n = len(item)
                if any(token >= vocabulary for token in item):
                    raise BadRequest(
                        f"input {index} holds token ids past this model's vocabulary of {vocabulary}", param="input"
                    )
            if n > limit:
                raise ContextLengthExceeded(
                    f"input {index} has {n} tokens, more than the {limit} an embedding can take; shorten it",
                    param="input",
                )
        texts = [item for item in inputs if isinstance(item, str)]
        by_text: list[list[float]] = []
        count = 0
        if texts:
            vectors, count = embedder.embed(texts, normalize=True, truncate=False, return_count=True)
            by_text = [list(map(float, v)) for v in vectors]
        out: list[list[float]] = []
        for item in inputs:
            if isinstance(item, str):
                out.append(by_text.pop(0))
            else:
                out.append(_embed_ids(embedder, list(item)))
                count += len(item)
        return Embeddings(out, prompt_tokens=count)

    async def count_tokens(self, text: str) -> int:
        """Exact number of tokens of ``text`` alone (no BOS, special markers read as plain text)."""
        if self._llama is None:
            raise EngineError("the llama.cpp engine is not started; call start() first")
        llama = self._llama
        return len(llama.tokenize(text.encode(), add_bos=False, special=False))


def _embed_ids(embedder: Llama, tokens: list[int]) -> list[float]:
    """The mean-pooled, L2-normalised embedding of exactly ``tokens`` (llama-cpp-python's ``embed`` takes text
    only); the same batch calls it makes for one sequence."""
    import llama_cpp
    import numpy as np

    embedder._batch.reset()  # type: ignore[no-untyped-call]
    embedder._ctx.kv_cache_clear()  # type: ignore[no-untyped-call]
    embedder._batch.add_sequence(tokens, 0, True)
    embedder._ctx.decode(embedder._batch)
    embedder._batch.reset()  # type: ignore[no-untyped-call]
    n_embd = embedder.n_embd()
    vector = np.array(llama_cpp.llama_get_embeddings_seq(embedder._ctx.ctx, 0)[:n_embd], dtype=np.float64)
    norm = float(np.linalg.norm(vector)) or 1.0
    return [float(x) for x in vector / norm]
