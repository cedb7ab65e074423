"""Continuous batching for the embedded engine: the sequences of several jobs decoded together in one llama.cpp
context, so that a worker's ``slots`` are generations computed at once.

Why batching and not a pool of contexts: on a CPU one token of a small model costs about as much in reading the
weights as in arithmetic, and a batch reads them once for all its rows; a pool splits the cores between
contexts and each still reads every weight for one token.

The context holds ``parallel`` sequences, each in its own KV stream of ``context_length`` cells (llama.cpp's
non-unified cache: a sequence attends only over its own cells). One thread runs ``BatchLoop``; each step is one
``llama_decode`` of one batch: first the next token of every sequence that is generating, then prompt tokens of
sequences being prefilled, oldest first: up to ``STEP_TOKENS`` in all when nothing is decoding, one
``PREFILL_CHUNK`` of them beside decoding sequences. So a new request's prefill rides along with the others'
decoding instead of waiting for them, the prompts of requests that arrive together are evaluated together, and a
long prompt is cut into steps, so nobody's next token waits behind more than one chunk of someone's prompt.

Prefix reuse: a sequence's slot keeps its KV cache after the job ends, and a new job takes the free slot whose
cached tokens begin like its prompt (the longest such prefix, in whole ``PREFILL_CHUNK``s, computed as prompt,
short of the prompt's last token: sampling needs fresh logits). Alone in the context, a job's prompt is evaluated
in ``PREFILL_CHUNK``-token micro-batches aligned from position 0 exactly as before batching, so a cached prompt
gives the logits a fresh one gives. With other sequences in the batch the rows round a little differently (the
kernels' blocking depends on the batch): greedy text is then reproducible only as far as those last bits allow;
canaries re-score answers with a tolerance for this (``cocoon.proxy.routing.canary``).

Every task has a cache ``scope`` (the worker's: one per client): a slot's cache is reused, and a running
sequence's prompt copied, only by a task of the same scope. A shared cache would let one client tell from its
time to first token (and ``cached_tokens``) whether a prefix it guesses is in another client's request.

Cancellation is seen at the next step: one step is at most ``STEP_TOKENS`` tokens, so a long prompt's prefill
stops within one step of it. There is no abort callback into llama.cpp: ggml calls it before every node of the
graph (some 400 times a step), each call takes the GIL, and with the worker's event loop busy a step took 7x
longer waiting for it. A failure of one sequence (its grammar, say) ends that job only; a failure of
``llama_decode`` ends the jobs of that step and forgets their KV.

Uses llama-cpp-python's private ``_internals`` (0.3.x) for the context and batch wrappers: its public ``Llama``
makes single-sequence contexts only.
"""

from __future__ import annotations

import collections
import ctypes
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from cocoon.errors import CocoonError, EngineError

if TYPE_CHECKING:
    from llama_cpp import Llama

log = logging.getLogger(__name__)

# Prompts are evaluated in micro-batches of this many tokens, aligned to multiples of it from position 0. llama.cpp's
# CPU kernels round differently for different batch sizes, so a KV prefix is reused only in whole chunks computed
# as chunks: alone in the context, a cached prompt then gives bit-identical logits to a fresh one.
PREFILL_CHUNK = 128
STEP_TOKENS = 4 * PREFILL_CHUNK  # tokens in one llama_decode: decoding sequences' next tokens plus prompt tokens
# A prompt prefix shared with a running sequence is copied rather than evaluated from this many tokens (a copy
# costs about what evaluating a token or two does: on this project's 2-core VM ~0.5 ms for a short prompt, a prompt
# token ~4 ms in a batch).
SHARE_MIN_TOKENS = 4
COPY_MAX_FACTOR = 8  # ...and only while the leader's sequence holds at most this many cells per token shared


class Task(Protocol):
    """What a sequence runs: a prompt to evaluate, then whatever it does with the logits it asked for.

    The loop calls ``begin`` once the sequence has a slot (``cached`` tokens of the prompt are already in its KV
    cache; ``context`` is the ``llama_context`` to read logits from), ``wants`` for each prompt position it
    evaluates (True: read that position's logits; the last one must be wanted to generate after it), then
    ``read`` with the position and batch index of each wanted output; after the prompt, ``read`` returns the next
    token to decode, or None when the task is done. ``end`` comes exactly once, when the slot is freed: ``error``
    None when it finished or was cancelled (``cancel``, set by whoever waits for it). Only a task of the same
    ``scope`` reuses or copies this one's KV.
    """

    tokens: list[int]
    cancel: threading.Event
    scope: str

    def begin(self, context: Any, cached: int) -> None: ...

    def wants(self, position: int) -> bool: ...

    def read(self, position: int, index: int) -> int | None: ...

    def end(self, error: CocoonError | None) -> None: ...


@dataclass(slots=True)
class _Slot:
    """One sequence id of the context and what its KV stream holds: ``held`` tokens from position 0, of which
    the first ``prompt_kv`` were evaluated as aligned prompt chunks (reusable) by a task of ``scope``."""

    seq_id: int
    held: list[int] = field(default_factory=list)
    scope: str = ""
    prompt_kv: int = 0
    used_at: float = 0.0
    task: Task | None = None
    evaluated: int = 0  # prompt tokens of the task in the KV cache
    pending: int | None = None  # the token to decode next, once the prompt is in
    prefilling: bool = True
    admitted: int = 0  # order of admission: prompts are evaluated oldest first
    follows: _Slot | None = None  # a running sequence whose prompt KV this one copies once it is that far
    follows_task: Task | None = None  # ... while that sequence still runs this task
    shared: int = 0  # how many prompt tokens it copies


@dataclass(frozen=True, slots=True)
class _Entry:
    """One token of a step's batch: its sequence's slot, position and id, and whether its logits are read."""

    slot: _Slot
    position: int
    token: int
    read: bool


class _StepAborted(Exception):
    """llama_decode did not finish the step; its sequences are already ended."""


def context_params(*, parallel: int, context_length: int, threads: int) -> Any:
    """The ``llama_context_params`` of a ``BatchLoop``'s context (``bench/overhead.py`` times bare
    ``llama_decode`` steps on one made the same way)."""
    import llama_cpp

    params = llama_cpp.llama_context_default_params()
    params.n_ctx = context_length * parallel
    params.n_batch = STEP_TOKENS
    params.n_ubatch = PREFILL_CHUNK
    params.n_seq_max = parallel
    params.kv_unified = False
    # Flash attention where the model allows it (llama.cpp's "auto"): without it the CPU's attention over
    # several KV streams made a step of 8 sequences 7x slower (it computes over every cell of the stream,
    # where flash attention skips the masked ones). Its logits differ from the plain kernels' in the last
    # digits, and more between one query and a chunk of them: see the module's note on reproducibility.
    params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO
    params.n_threads = params.n_threads_batch = threads
    return params


class BatchLoop:
    """The decoding thread of one llama.cpp context with ``parallel`` sequences of ``context_length`` tokens.

    ``submit`` hands it a task (any thread); tasks beyond ``parallel`` wait their turn in order. ``close`` stops
    the thread after failing what is left. Raises ``EngineError`` from the constructor when llama.cpp cannot make
    the context.
    """

    def __init__(self, llama: Llama, *, parallel: int, context_length: int, threads: int) -> None:
        import llama_cpp
        from llama_cpp import _internals
        from llama_cpp._utils import suppress_stdout_stderr

        self._llama_cpp = llama_cpp
        params = context_params(parallel=parallel, context_length=context_length, threads=threads)
        try:
            with suppress_stdout_stderr(disable=False):  # llama.cpp's notes on the cache it made
                self._context = _internals.LlamaContext(model=llama._model, params=params, verbose=False)
        except ValueError as exc:
            raise EngineError(f"llama.cpp could not make a context of {parallel} sequences: {exc}") from exc
        self._batch = _internals.LlamaBatch(n_tokens=STEP_TOKENS, embd=0, n_seq_max=1, verbose=False)
        self.ctx = self._context.ctx
        self._memory = llama_cpp.llama_get_memory(self.ctx)
        self._slots = [_Slot(seq_id) for seq_id in range(parallel)]
        self._waiting: collections.deque[Task] = collections.deque()
        self._wake = threading.Condition()
        self._closing = False
        self._admitted = 0
        self.shared_tokens = 0  # prompt tokens copied from a running sequence instead of evaluated, since start

        self._thread = threading.Thread(target=self._run, name="llamacpp-batch", daemon=True)
        self._thread.start()

    @property
    def busy(self) -> int:
        """Sequences running now."""
        return sum(slot.task is not None for slot in self._slots)

    def submit(self, task: Task) -> None:
        with self._wake:
            if self._closing:
                raise EngineError("the llama.cpp engine is closing")
            self._waiting.append(task)
            self._wake.notify()

    def close(self) -> None:
        """Fail waiting and running tasks, stop the thread and free the context. Idempotent."""
        with self._wake:
            if self._closing and not self._thread.is_alive():
                return
            self._closing = True
            self._wake.notify()
        self._thread.join()
        self._batch.close()  # type: ignore[no-untyped-call]
        self._context.close()  # type: ignore[no-untyped-call]

    # The loop thread.

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._closing and not self._waiting and self.busy == 0:
                    self._wake.wait()
                if self._closing:
                    break
                free = len(self._slots) - self.busy
                arrived = [self._waiting.popleft() for _ in range(min(free, len(self._waiting)))]
            try:
                self._admit(arrived)  # outside the lock: a task's begin may take a while (a grammar's vocabulary)
                self._step()
            except _StepAborted:
                pass
            except Exception as exc:  # never let the thread die: fail what ran, forget its cache, go on
                log.exception("llama.cpp batch step failed")
                self._fail_running(EngineError(f"llama.cpp failed while generating: {exc}"))
        closed = EngineError("the llama.cpp engine closed")
        self._fail_running(closed)
        with self._wake:
            for task in self._waiting:
                task.end(closed)
            self._waiting.clear()

    def _admit(self, arrived: list[Task]) -> None:
        """Give the tasks that arrived free slots, each the one whose cache shares the longest prefix with it."""
        for task in arrived:
            if task.cancel.is_set():
                continue
            free = [slot for slot in self._slots if slot.task is None]
            slot = max(free, key=lambda s: (_reusable(s, task), -s.used_at))
            cached = _reusable(slot, task)
            if cached and not self._llama_cpp.llama_memory_seq_rm(self._memory, slot.seq_id, cached, -1):
                cached = 0
            if not cached:
                self._forget(slot)
            del slot.held[cached:]
            slot.prompt_kv, slot.scope = cached, task.scope
            self._admitted += 1
            slot.task, slot.evaluated, slot.pending, slot.prefilling = task, cached, None, True
            slot.admitted = self._admitted
            self._follow(slot, task, cached)
            try:
                task.begin(self.ctx, cached)
            except CocoonError as exc:
                self._end(slot, exc)
            except Exception as exc:
                log.exception("llama.cpp task failed to begin")
                self._end(slot, EngineError(f"llama.cpp failed while generating: {exc}"))

    def _step(self) -> None:
        """One llama_decode: every generating sequence's next token, then as many prompt tokens as fit."""
        for slot in self._slots:
            if slot.task is not None and slot.task.cancel.is_set():
                self._end(slot, None)
        for slot in self._slots:
            if slot.follows is not None:
                self._copy_if_ready(slot)
        entries: list[_Entry] = []
        for slot in self._slots:
            if slot.task is not None and not slot.prefilling and slot.pending is not None:
                entries.append(_Entry(slot, len(slot.held), slot.pending, True))
        prefilling = sorted(
            (slot for slot in self._slots if slot.task is not None and slot.prefilling and slot.follows is None),
            key=lambda s: s.admitted,
        )
        # While others decode, a step carries one chunk of prompt: their next tokens wait for it (a chunk is
        # about a third of a second on one core), where a whole step of prompt would hold them for seconds.
        budget = PREFILL_CHUNK + len(entries) if entries else STEP_TOKENS
        for slot in prefilling:
            room = budget - len(entries)
            if room <= 0:
                break
            task = slot.task
            assert task is not None
            start, left = slot.evaluated, len(task.tokens) - slot.evaluated
            count = min(room, left)
            if count < left:  # end on a chunk boundary where it can, so the next step starts on one
                aligned = (start + count) // PREFILL_CHUNK * PREFILL_CHUNK - start
                count = aligned if aligned > 0 else count
            entries.extend(_Entry(slot, p, task.tokens[p], task.wants(p)) for p in range(start, start + count))
        if not entries:
            return
        self._decode(entries)
        now = time.monotonic()
        for index, entry in enumerate(entries):
            slot = entry.slot
            task = slot.task
            if task is None:
                continue  # ended earlier in this step
            slot.used_at = now
            slot.held.append(entry.token)
            if slot.prefilling:
                slot.evaluated = entry.position + 1
                if slot.evaluated == len(task.tokens):
                    slot.prefilling = False
                    # A sequence that copied part of its prompt evaluated the rest from where the copy ended, not
                    # in chunks from 0: its KV is not kept as a reusable prompt cache (the one it copied from is).
                    slot.prompt_kv = 0 if slot.shared else len(task.tokens)
            else:
                slot.pending = None
            if not entry.read:
                continue
            try:
                following = task.read(entry.position, index)
            except CocoonError as exc:
                self._end(slot, exc)
                continue
            except Exception as exc:
                log.exception("llama.cpp sequence failed")
                self._end(slot, EngineError(f"llama.cpp failed while generating: {exc}"))
                continue
            if not slot.prefilling:
                slot.pending = following
        for slot in self._slots:  # the prompt went in and the task asks for nothing more: done
            if slot.task is not None and not slot.prefilling and slot.pending is None:
                self._end(slot, None)

    def _follow(self, slot: _Slot, task: Task, cached: int) -> None:
        """Have ``slot`` copy the KV of the longest prompt prefix it shares with a running sequence instead of
        evaluating it, when that is more than its own cache gives and at least ``SHARE_MIN_TOKENS``: requests
        with one system prompt, arriving together, evaluate it once. It stops short of any position the task
        wants logits for (a score reads them) and of its last prompt token (sampling needs fresh logits)."""
        best, shared = None, 0
        for other in self._slots:
            if other is slot or other.task is None or other.shared or other.task.scope != task.scope:
                continue  # a sequence that copied is never copied from (its own copy may not be applied yet)
            common = _common_prefix(other.task.tokens, task.tokens, len(task.tokens) - 1)
            if common > shared:
                best, shared = other, common
        shared = next((p for p in range(cached, shared) if task.wants(p)), shared)
        if best is None or shared - cached < SHARE_MIN_TOKENS:
            return
        slot.follows, slot.follows_task, slot.shared = best, best.task, shared
        self._copy_if_ready(slot)

    def _copy_if_ready(self, slot: _Slot) -> None:
        """Copy the followed sequence's KV once it has evaluated the shared prefix; if it ended first (or holds
        another task now), evaluate the prompt as usual from this slot's own cache."""
        leader, shared = slot.follows, slot.shared
        assert leader is not None and slot.task is not None
        if leader.task is not slot.follows_task or leader.task is None:
            _unfollow(slot)
            return
        done = leader.evaluated if leader.prefilling else len(leader.task.tokens)
        if done < shared:
            return  # it gets there in a later step
        if len(leader.held) > COPY_MAX_FACTOR * shared:
            # The copy takes every cell of the leader's sequence: a few shared tokens (a chat template's opening)
            # of a sequence thousands of tokens long are cheaper evaluated than copied.
            _unfollow(slot)
            return
        # The leader's sequence state (its cells only: ~18 KB a token for Gemma 3 270M) goes into this one, and
        # what follows the shared prefix is dropped. Not llama_memory_seq_cp: across KV streams it copies whole
        # streams (~15 ms each here, at 4,096 cells), most of what evaluating a short prompt costs.
        llama_cpp, ctx = self._llama_cpp, self.ctx
        slot.follows = slot.follows_task = None
        size = llama_cpp.llama_state_seq_get_size(ctx, leader.seq_id)
        state = (ctypes.c_uint8 * size)()
        got = llama_cpp.llama_state_seq_get_data(ctx, state, size, leader.seq_id)
        llama_cpp.llama_memory_seq_rm(self._memory, slot.seq_id, -1, -1)
        if not got or llama_cpp.llama_state_seq_set_data(ctx, state, got, slot.seq_id) != got:
            log.warning("llama.cpp could not copy a shared prompt prefix; evaluating it")
            self._forget(slot)
            slot.evaluated, slot.shared = 0, 0
            return
        llama_cpp.llama_memory_seq_rm(self._memory, slot.seq_id, shared, -1)
        slot.held[:] = slot.task.tokens[:shared]
        self.shared_tokens += shared - slot.evaluated
        slot.evaluated = shared

    def _decode(self, entries: list[_Entry]) -> None:
        batch = self._batch.batch
        batch.n_tokens = len(entries)
        for i, entry in enumerate(entries):
            batch.token[i] = entry.token
            batch.pos[i] = entry.position
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = entry.slot.seq_id
            batch.logits[i] = entry.read
        if not any(entry.read for entry in entries):  # llama.cpp wants an output in every batch
            batch.logits[len(entries) - 1] = True
        result = self._llama_cpp.llama_decode(self.ctx, batch)
        if result == 0:
            return
        log.error("llama_decode failed result=%d tokens=%d", result, len(entries))
        error = EngineError(f"llama_decode returned {result}")
        for slot in {id(entry.slot): entry.slot for entry in entries}.values():
            self._forget(slot)
            if slot.task is not None:
                self._end(slot, error)
        raise _StepAborted

    def _end(self, slot: _Slot, error: CocoonError | None) -> None:
        """Free ``slot``: its task ended (error: with that error). A cancelled or failed prefill leaves nothing
        to reuse; a finished or cancelled generation leaves its prompt (what was decoded after it is not kept:
        tokens decoded one by one are not computed as chunks)."""
        task, slot.task = slot.task, None
        _unfollow(slot)
        if error is not None or (slot.prefilling and task is not None):
            self._forget(slot)
        else:
            keep = slot.prompt_kv
            if keep < len(slot.held) and not self._llama_cpp.llama_memory_seq_rm(self._memory, slot.seq_id, keep, -1):
                self._forget(slot)
            else:
                del slot.held[keep:]
        slot.pending = None
        if task is not None:
            try:
                task.end(error)
            except Exception:
                log.exception("llama.cpp task failed to end")

    def _forget(self, slot: _Slot) -> None:
        self._llama_cpp.llama_memory_seq_rm(self._memory, slot.seq_id, -1, -1)
        slot.held.clear()
        slot.prompt_kv = 0

    def _fail_running(self, error: CocoonError) -> None:
        for slot in self._slots:
            if slot.task is not None:
                self._end(slot, error)
            else:
                self._forget(slot)


def _unfollow(slot: _Slot) -> None:
    """``slot`` copies nothing: it evaluates its prompt itself."""
    slot.follows = slot.follows_task = None
    slot.shared = 0


def _common_prefix(a: list[int], b: list[int], limit: int) -> int:
    """How many leading tokens ``a`` and ``b`` share, at most ``limit``."""
    limit = min(limit, len(a), len(b))
    n = 0
    while n < limit and a[n] == b[n]:
        n += 1
    return n


def _reusable(slot: _Slot, task: Task) -> int:
    """How much of the task's prompt the slot's cache can give: equal tokens of the same scope, evaluated as
    prompt chunks, a whole number of ``PREFILL_CHUNK``s, and short of the last token (sampling needs fresh
    logits)."""
    if slot.scope != task.scope:
        return 0
    tokens = task.tokens
    prefix = _common_prefix(slot.held, tokens, min(slot.prompt_kv, len(tokens) - 1))
    return prefix - prefix % PREFILL_CHUNK
