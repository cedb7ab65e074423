"""The embedded engine: llama.cpp (through llama-cpp-python) on the worker's CPU, the default backend.

A pool of ``parallel`` llama.cpp contexts; each job borrows one, decodes in a worker thread and hands
events back to the event loop through an asyncio queue. ``llama_cpp`` is imported only in ``start()``.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import logging
import os
import threading
from collections.abc import AsyncGenerator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
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

    from cocoon.engines.sampling import TokenBytes

log = logging.getLogger(__name__)

_EMBED_BATCH_CAP = 4096  # tokens per embedding input; also the embedding context size
# Prompts are evaluated in chunks of this many tokens, always aligned to multiples of it from position 0.
# llama.cpp's CPU kernels round differently for different batch sizes, so a KV prefix is reused only in
# whole chunks computed as chunks: a cached prompt then gives bit-identical logits to a fresh one, and
# greedy decoding stays reproducible across workers and cache states (canaries compare it exactly).
PREFILL_CHUNK = 128


@dataclass(slots=True)
class _Context:
    """A llama.cpp context in the pool.

    ``prompt_kv`` counts the leading KV entries computed by chunked prompt evaluation (reusable exactly),
    as opposed to one token at a time while decoding. ``cancel`` is the running job's flag, polled by
    llama.cpp's abort callback so that a cancelled job stops even in the middle of a long prefill.
    """

    llama: Llama
    prompt_kv: int = 0
    cancel: threading.Event = field(default_factory=threading.Event)
    abort_callback: object = None  # the ctypes callback, kept alive as long as the context

    def watch_cancellation(self) -> None:
        import llama_cpp

        @llama_cpp.ggml_abort_callback  # type: ignore[untyped-decorator]
        def should_abort(_: object) -> bool:
            return self.cancel.is_set()

        llama_cpp.llama_set_abort_callback(self.llama.ctx, should_abort, None)
        self.abort_callback = should_abort


@dataclass(slots=True)
class _Job:
    """One generation handed to a worker thread; ``emit`` is thread-safe, ``cancel`` is set by the loop.

    ``grammar`` (GBNF) constrains the answer, ``tools`` says to read tool calls out of it, ``top_logprobs`` is
    None when no log-probabilities are wanted.
    """

    tokens: list[int]
    params: SamplingParams
    cancel: threading.Event
    emit: Callable[[GenerationEvent | CocoonError], None]
    grammar: str | None = None
    tools: bool = False
    top_logprobs: int | None = None


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
        self._threads = settings.threads or max(1, (os.cpu_count() or 1) // settings.parallel)
        self._contexts: list[_Context] = []
        self._free: asyncio.Queue[_Context] | None = None
        self._executor: ThreadPoolExecutor | None = None
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
        self._contexts = await asyncio.to_thread(self._load_contexts, path)
        for context in self._contexts:
            context.watch_cancellation()
        self._template = chat_template_for(self._contexts[0].llama, path)
        self._free = asyncio.Queue()
        for context in self._contexts:
            self._free.put_nowait(context)
        self._executor = ThreadPoolExecutor(settings.parallel, thread_name_prefix="llamacpp")
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
                "parallel": str(settings.parallel),
                "threads": str(self._threads),
            },
        )
        log.info("llama.cpp engine ready model=%s path=%s parallel=%d", settings.model, path, len(self._contexts))

    def _load_contexts(self, path: Path) -> list[_Context]:
        from llama_cpp import Llama

        try:
            return [
                _Context(
                    Llama(
                        str(path),
                        n_ctx=self._settings.context_length,
                        n_batch=PREFILL_CHUNK,
                        n_ubatch=PREFILL_CHUNK,
                        n_threads=self._threads,
                        n_threads_batch=self._threads,
                        verbose=False,
                    )
                )
                for _ in range(self._settings.parallel)
            ]
        except (ValueError, RuntimeError) as exc:
            raise EngineError(f"llama.cpp could not load {path}: {exc}; is it a valid GGUF file?") from exc

    async def close(self) -> None:
        """Cancel running jobs, wait for their threads and free every context. Idempotent."""
        for cancel in list(self._running):
            cancel.set()
        if self._executor is not None:
            await asyncio.to_thread(self._executor.shutdown, True)
            self._executor = None
        for context in self._contexts:
            context.llama.close()
        self._contexts = []
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
        free, executor = self._free, self._executor
        assert free is not None and executor is not None
        if request.params.max_tokens < 1:
            raise BadRequest("max_tokens must be at least 1", param="max_tokens")
        refuse_unsupported(request, info.model)
        grammar = answer_grammar(request)
        # Tokenizing only reads the model's vocabulary: any context will do, even a busy one.
        tokens = self._template.prompt_tokens(self._contexts[0].llama, request)
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

        context = await free.get()
        self._running.add(cancel)
        top_logprobs = request.top_logprobs if request.logprobs else None
        job = _Job(tokens, request.params, cancel, emit, grammar, request.wants_tools, top_logprobs)
        future = loop.run_in_executor(executor, self._decode, context, job)

        def release(_: object) -> None:
            self._running.discard(cancel)
            free.put_nowait(context)

        future.add_done_callback(release)
        try:
            while True:
                item = await events.get()
                if isinstance(item, CocoonError):
                    raise item
                yield item
                if isinstance(item, Finished):
                    return
        finally:
            # Consumer closed or cancelled us (or we finished): the thread stops at the next token and
            # ``release`` puts the context back in the pool.
            cancel.set()

    def _decode(self, context: _Context, job: _Job) -> None:
        """Worker-thread body: run one job to its end, reporting errors through ``job.emit``."""
        context.cancel = job.cancel
        try:
            self._decode_tokens(context, job)
        except Exception as exc:  # crossing the thread boundary: the consumer raises it
            context.llama.n_tokens = 0  # forget the KV cache: the next job evaluates from scratch
            context.prompt_kv = 0
            if job.cancel.is_set():
                return  # llama_decode aborted on our request; nobody waits for an answer
            log.exception("llama.cpp generation failed")
            job.emit(EngineError(f"llama.cpp failed while generating: {exc}"))

    def _decode_tokens(self, context: _Context, job: _Job) -> None:
        import llama_cpp

        from cocoon.engines.sampling import TokenSampler

        params, llama = job.params, context.llama
        cached = _reuse_kv_prefix(context, job.tokens)
        context.prompt_kv = cached  # until the new prompt is evaluated
        vocab = llama._model.vocab
        utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        answer = AnswerStream(job.emit, params.stop, ToolCallReader() if job.tools else None)
        completion = 0
        reason: FinishReason = "length"
        vocabulary = self._token_bytes(llama) if job.grammar is not None else None
        sampler = TokenSampler(llama, params, job.top_logprobs, job.grammar, vocabulary)
        with contextlib.closing(sampler):
            llama.eval(job.tokens[cached:])  # from a chunk boundary, in whole chunks: see PREFILL_CHUNK
            context.prompt_kv = len(job.tokens)
            while True:
                if job.cancel.is_set():
                    return
                token = sampler.next_token()
                completion += 1
                if token == self._template.end_of_turn or llama_cpp.llama_vocab_is_eog(vocab, token):
                    answer.add("")
                    reason = "stop"
                    break
                logprob = sampler.logprob(token) if job.top_logprobs is not None else None
                answer.add(utf8.decode(llama.detokenize([token])), logprob)
                if answer.stopped:
                    reason = "stop"
                    break
                if completion >= params.max_tokens:
                    break
                llama.eval([token])
        usage = TokenUsage(len(job.tokens), completion, cached_tokens=cached)
        answer.finish(utf8.decode(b"", final=True), reason, usage)

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
        free, executor = self._free, self._executor
        assert free is not None and executor is not None
        llama = self._contexts[0].llama
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
        context = await free.get()
        try:
            logprobs, greedy = await asyncio.get_running_loop().run_in_executor(
                executor, _score_blocking, context, prompt, completion
            )
        finally:
            free.put_nowait(context)
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
        if not self._contexts:
            raise EngineError("the llama.cpp engine is not started; call start() first")
        llama = self._contexts[0].llama
        return len(llama.tokenize(text.encode(), add_bos=False, special=False))


def _score_blocking(context: _Context, prompt: list[int], completion: list[int]) -> tuple[list[float], list[bool]]:
    """Worker-thread body of ``score``: evaluate prompt + completion in aligned chunks, reading logits only at
    the positions that predict a completion token, and log-softmax each of those rows.

    The KV cache keeps what it can reuse (whole chunks of the prompt) and afterwards holds this sequence, all of
    it computed in chunks, so a later ``generate`` of the same prompt reuses it exactly.
    """
    import llama_cpp
    import numpy as np

    llama = context.llama
    tokens = prompt + completion
    if not completion:
        return [], []
    context.cancel = threading.Event()
    try:
        cached = _reuse_kv_prefix(context, prompt)  # a whole number of chunks, short of the last prompt token
        context.prompt_kv = cached
        llama._ctx.kv_cache_seq_rm(-1, cached, -1)  # what generation decoded after the reused chunks
        first_output = len(prompt) - 1  # the logits at position p rate the token at p + 1
        n_vocab = llama.n_vocab()
        logprobs: list[float] = []
        greedy: list[bool] = []
        for start in range(cached, len(tokens), PREFILL_CHUNK):
            chunk = tokens[start : start + PREFILL_CHUNK]
            llama._batch.set_batch(batch=chunk, n_past=start, logits_all=False)
            wanted = [i for i in range(len(chunk)) if first_output <= start + i < len(tokens) - 1]
            llama._batch.batch.logits[len(chunk) - 1] = False
            for i in wanted:
                llama._batch.batch.logits[i] = True
            if not wanted:  # llama.cpp wants one output per batch; the last one costs nothing to read
                llama._batch.batch.logits[len(chunk) - 1] = True
            llama._ctx.decode(llama._batch)
            llama.input_ids[start : start + len(chunk)] = chunk
            llama.n_tokens = start + len(chunk)
            for i in wanted:
                row = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llama.ctx, i), shape=(n_vocab,))
                row = row.astype(np.float64)
                top = float(row.max())
                log_total = top + float(np.log(np.exp(row - top).sum()))
                following = tokens[start + i + 1]
                logprobs.append(float(row[following]) - log_total)
                greedy.append(int(row.argmax()) == following)
        context.prompt_kv = len(tokens)
        return logprobs, greedy
    except Exception as exc:  # crossing the thread boundary: the caller raises it
        llama.n_tokens = 0
        context.prompt_kv = 0
        log.exception("llama.cpp scoring failed")
        raise EngineError(f"llama.cpp failed while scoring: {exc}") from exc


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


def _reuse_kv_prefix(context: _Context, tokens: list[int]) -> int:
    """Keep the longest reusable prefix of ``tokens`` in the context's KV cache; return its length.

    Reusable: equal tokens, computed by prompt evaluation, a whole number of ``PREFILL_CHUNK``s, and
    short of the last prompt token (sampling needs fresh logits). ``Llama.generate`` then finds the same
    prefix and evaluates only the rest. This uses llama-cpp-python's private ``_ctx`` (0.3.x): its
    public API neither lets us bound the reuse nor reports what it reused.
    """
    llama = context.llama
    limit = min(context.prompt_kv, llama.n_tokens, len(tokens) - 1)
    held = llama.input_ids[:limit].tolist()
    prefix = 0
    while prefix < limit and held[prefix] == tokens[prefix]:
        prefix += 1
    prefix -= prefix % PREFILL_CHUNK
    if prefix > 0 and llama._ctx.kv_cache_seq_rm(-1, prefix, -1):
        llama.n_tokens = prefix
        return prefix
    llama.n_tokens = 0
    return 0
