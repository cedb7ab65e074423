"""How the embedded engine picks each next token: OpenAI's knobs as a llama.cpp sampler chain, an optional output
grammar, and the log-probabilities of what it picked.

A grammar checked against the whole vocabulary costs more than the model's own step (Gemma has 262k tokens;
llama.cpp matches each one's text against the grammar). So, as llama.cpp's ``common_sampler`` does, the chain
samples first without the grammar and only that token is checked. When the grammar refuses it, only the tokens
whose first byte the grammar allows are checked (``TokenBytes``: one probe per byte finds those bytes; greedy
decoding looks among the likeliest few first when that is still many) and the chain samples again among the
allowed ones. Greedy's pick is the likeliest allowed token either way; sampling keeps the chain's distribution
over the allowed tokens, as llama.cpp's does.
"""

from __future__ import annotations

import ctypes
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import llama_cpp
import numpy as np

from cocoon.engines.base import SamplingParams, TokenLogprob, TopLogprob
from cocoon.errors import EngineError

if TYPE_CHECKING:
    from llama_cpp import Llama

PENALTY_WINDOW = 64  # tokens frequency_penalty and presence_penalty look back over (llama-cpp-python's default)
_CELL = np.dtype([("id", np.intc), ("logit", np.single), ("p", np.single)], align=True)  # llama_token_data
_GREEDY_SHORTLIST = 64  # likeliest tokens greedy decoding checks first, when the first bytes leave more than
_FEW = 4096  # this many candidates (checking costs about 0.2 µs a token)


@dataclass(frozen=True, slots=True)
class TokenBytes:
    """A vocabulary by first byte, for the grammar fallback: ``by_first`` holds the token ids grouped by the first
    byte of their text, byte ``b``'s from ``starts[b]`` to ``starts[b + 1]``; ``single`` is a token of each
    single byte (-1: none); ``eog`` the end-of-generation tokens (the grammar allows them once it is done)."""

    by_first: Any  # numpy int32 array
    starts: Any  # numpy int64 array of 257
    single: Any  # numpy int32 array of 256
    eog: Any  # numpy int32 array

    @classmethod
    def of(cls, llama: Llama) -> TokenBytes:
        """Read from ``llama``'s vocabulary, text as llama.cpp's grammar sees it (special tokens written out);
        about half a second for Gemma's 262k tokens."""
        vocab, n_vocab = llama._model.vocab, llama.n_vocab()
        first = np.full(n_vocab, 256, np.int16)  # 256: no text, never allowed but as an end of generation
        single = np.full(256, -1, np.int32)
        piece = ctypes.create_string_buffer(4096)
        for token in range(n_vocab):
            size = llama_cpp.llama_token_to_piece(vocab, token, piece, len(piece), 0, True)
            if size > 0:
                byte = piece[0][0]
                first[token] = byte
                if size == 1 and single[byte] < 0:
                    single[byte] = token
        by_first = np.argsort(first, kind="stable").astype(np.int32)
        starts = np.searchsorted(first[by_first], np.arange(257))
        eog = np.array([t for t in range(n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, t)], np.int32)
        return cls(by_first, starts, single, eog)


class TokenSampler:
    """Picks the tokens of one generation from the logits of ``llama``'s last evaluated position.

    ``grammar`` (GBNF, start rule ``root``) limits what may be written, ``vocabulary`` is then the model's
    ``TokenBytes``; ``top_logprobs`` (None: no log-probabilities wanted) is how many alternatives ``logprob``
    lists. Call ``close`` when done. Raises ``EngineError`` when llama.cpp cannot parse the grammar.
    """

    def __init__(
        self,
        llama: Llama,
        params: SamplingParams,
        top_logprobs: int | None,
        grammar: str | None = None,
        vocabulary: TokenBytes | None = None,
    ) -> None:
        self._llama = llama
        self._n_vocab = llama.n_vocab()
        self._vocab = llama._model.vocab
        self._greedy = params.temperature <= 0
        # Without penalties the chain's history does not matter, so it may take a token the grammar then refuses.
        self._history_free = params.frequency_penalty == 0 and params.presence_penalty == 0
        # Greedy on the raw logits: what the grammar allows is then picked from them, no chain needed.
        self._raw_greedy = self._greedy and self._history_free and not params.logit_bias
        self._top_logprobs = top_logprobs
        self._pieces: dict[int, bytes] = {}
        self._chain = _chain(params, self._n_vocab)
        self._grammar: Any = None
        if grammar is not None:
            assert vocabulary is not None
            self._bytes = vocabulary
            self._grammar = llama_cpp.llama_sampler_init_grammar(self._vocab, grammar.encode(), b"root")
            if not self._grammar:
                self.close()
                raise EngineError("llama.cpp could not parse the output grammar")
            self._blank = np.zeros(self._n_vocab, _CELL)
            self._blank["id"] = np.arange(self._n_vocab)
            self._cells = self._blank.copy()
            self._one = np.zeros(1, _CELL)

    def close(self) -> None:
        if self._chain is not None:
            llama_cpp.llama_sampler_free(self._chain)
            self._chain = None
        if self._grammar is not None:
            llama_cpp.llama_sampler_free(self._grammar)
            self._grammar = None

    def next_token(self) -> int:
        """The next token, taken into the penalties' history and the grammar's state."""
        if self._grammar is None:
            return int(llama_cpp.llama_sampler_sample(self._chain, self._llama.ctx, -1))
        if self._history_free:  # taken into the chain at once: without penalties that has no effect
            token = int(llama_cpp.llama_sampler_sample(self._chain, self._llama.ctx, -1))
        else:
            cells = self._fill()
            llama_cpp.llama_sampler_apply(self._chain, ctypes.byref(cells))
            token = int(cells.data[cells.selected].id)
        if not self._allowed(token):
            token = self._constrained()
        if not self._history_free:
            llama_cpp.llama_sampler_accept(self._chain, token)
        return self._accepted(token)

    def logprob(self, token: int) -> TokenLogprob:
        """``token``'s log-probability under the raw logits (before biases, penalties and grammar), and the
        ``top_logprobs`` likeliest tokens there, best first."""
        logits = self._logits()
        top = float(logits.max())
        total = top + math.log(float(np.exp(logits - top).sum(dtype=np.float64)))
        best: tuple[TopLogprob, ...] = ()
        if self._top_logprobs:
            k = min(self._top_logprobs, self._n_vocab)
            ids = np.argpartition(logits, -k)[-k:]
            ids = ids[np.lexsort((ids, -logits[ids]))]
            best = tuple(self._alternative(int(i), float(logits[i]) - total) for i in ids)
        text, raw = self._text(token)
        return TokenLogprob(text, float(logits[token]) - total, raw, best)

    def _accepted(self, token: int) -> int:
        if not llama_cpp.llama_vocab_is_eog(self._vocab, token):  # the grammar ends at an end of generation
            llama_cpp.llama_sampler_accept(self._grammar, token)
        return token

    def _alternative(self, token: int, logprob: float) -> TopLogprob:
        text, raw = self._text(token)
        return TopLogprob(text, logprob, raw)

    def _text(self, token: int) -> tuple[str, tuple[int, ...]]:
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._pieces[token] = self._llama.detokenize([token], special=True)
        return piece.decode("utf-8", errors="replace"), tuple(piece)

    def _logits(self) -> Any:
        return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self._llama.ctx, -1), shape=(self._n_vocab,))

    def _fill(self) -> llama_cpp.llama_token_data_array:
        """The whole vocabulary in id order with its raw logits, as llama.cpp's samplers take it."""
        np.copyto(self._cells.view(np.int32), self._blank.view(np.int32))  # as raw words: a memcpy
        self._cells["logit"] = self._logits()
        return _array(self._cells)

    def _allowed(self, token: int) -> bool:
        self._one["id"], self._one["logit"] = token, 0.0
        llama_cpp.llama_sampler_apply(self._grammar, ctypes.byref(_array(self._one)))
        return bool(np.isfinite(self._one["logit"][0]))

    def _constrained(self) -> int:
        """A token the grammar allows, the chain's own pick having been refused."""
        candidates = self._candidates()
        if self._greedy:
            # The likeliest allowed token, under the logits as bias and penalties leave them (the chain adjusts
            # them in place, greedy only marks the best); among the likeliest few first when candidates are many.
            if self._raw_greedy:
                logits = self._logits()
            else:
                llama_cpp.llama_sampler_apply(self._chain, ctypes.byref(self._fill()))
                logits = self._cells["logit"]
            if candidates.size > _FEW:
                token = _best(
                    self._checked(_cells(np.argpartition(logits, -_GREEDY_SHORTLIST)[-_GREEDY_SHORTLIST:], logits))
                )
                if token is not None:
                    return token
            token = _best(self._checked(_cells(candidates, logits)))
            if token is None:
                raise EngineError("the output grammar allows no token of this model here")
            return token
        cells = self._fill()
        checked = self._checked(self._cells[candidates])
        self._cells["logit"] = -np.inf
        self._cells["logit"][candidates] = checked["logit"]
        llama_cpp.llama_sampler_apply(self._chain, ctypes.byref(cells))
        chosen = cells.data[cells.selected]
        if not math.isfinite(chosen.logit):
            raise EngineError("the output grammar allows no token of this model here")
        return int(chosen.id)

    def _candidates(self) -> Any:
        """The tokens whose first byte the grammar allows now, and the ends of generation: a token can be allowed
        only if its first byte is (a byte no token stands for alone is taken as allowed)."""
        probes = self._bytes.single
        known = np.flatnonzero(probes >= 0)
        allowed = np.ones(256, dtype=bool)
        probe = np.zeros(known.size, _CELL)
        probe["id"] = probes[known]
        allowed[known] = np.isfinite(self._checked(probe)["logit"])
        starts, by_first = self._bytes.starts, self._bytes.by_first
        groups = [by_first[starts[b] : starts[b + 1]] for b in np.flatnonzero(allowed)]
        return np.concatenate([*groups, self._bytes.eog])

    def _checked(self, cells: Any) -> Any:
        """``cells`` (a copy) with the logits of the tokens the grammar refuses set to -inf."""
        cells = np.ascontiguousarray(cells)
        llama_cpp.llama_sampler_apply(self._grammar, ctypes.byref(_array(cells)))
        return cells


def _array(cells: Any) -> llama_cpp.llama_token_data_array:
    return llama_cpp.llama_token_data_array(cells.ctypes.data_as(llama_cpp.llama_token_data_p), len(cells), -1, False)


def _cells(ids: Any, logits: Any) -> Any:
    """Tokens ``ids`` with their ``logits``, in llama.cpp's layout."""
    cells = np.zeros(len(ids), _CELL)
    cells["id"], cells["logit"] = ids, logits[ids]
    return cells


def _best(cells: Any) -> int | None:
    """The allowed token with the highest logit, the lowest id among equals (as greedy picks); None if none is."""
    allowed = np.isfinite(cells["logit"])
    if not allowed.any():
        return None
    logits, ids = cells["logit"][allowed], cells["id"][allowed]
    return int(ids[logits == logits.max()].min())


def _chain(params: SamplingParams, n_vocab: int) -> Any:
    """OpenAI's knobs only: no top-k, min-p or repeat penalty, so temperature 0 is plain greedy decoding."""
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())

    def add(sampler: Any) -> None:
        llama_cpp.llama_sampler_chain_add(chain, sampler)

    # Token ids past the vocabulary name no token of this model and are ignored, as OpenAI ignores unknown ones.
    bias = [(token, value) for token, value in params.logit_bias if 0 <= token < n_vocab]
    if bias:
        entries = (llama_cpp.llama_logit_bias * len(bias))(*(llama_cpp.llama_logit_bias(t, v) for t, v in bias))
        add(llama_cpp.llama_sampler_init_logit_bias(n_vocab, len(bias), entries))
    add(
        llama_cpp.llama_sampler_init_penalties(
            n_vocab, PENALTY_WINDOW, 1.0, params.frequency_penalty, params.presence_penalty
        )
    )
    if params.temperature <= 0:
        add(llama_cpp.llama_sampler_init_greedy())
    else:
        seed = llama_cpp.LLAMA_DEFAULT_SEED if params.seed is None else params.seed & 0xFFFFFFFF
        add(llama_cpp.llama_sampler_init_top_p(params.top_p, 1))
        add(llama_cpp.llama_sampler_init_temp(params.temperature))
        add(llama_cpp.llama_sampler_init_dist(seed))
    return chain
