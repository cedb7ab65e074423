"""How the embedded engine picks each next token: OpenAI's knobs as a llama.cpp sampler chain, an optional output
grammar, and the log-probabilities of what it picked.

A grammar checked against the whole vocabulary costs more than the model's own step (Gemma has 262k tokens;
llama.cpp matches each one's text against the grammar). So, as llama.cpp's ``common_sampler`` does, the chain
samples first without the grammar and only that token is checked. When the grammar refuses it:

- greedy decoding wants the likeliest allowed token: it checks the likeliest few, then the tokens whose first
  byte the grammar allows (``TokenBytes``; one probe per byte finds those bytes);
- sampling wants a draw from the chain's distribution restricted to the allowed tokens (rejection sampling keeps
  it so). Without top_p or penalties, when the first bytes leave few candidates, it draws among the allowed ones
  from their own logits; otherwise it draws again from the chain's distribution, some times, then checks the
  chain's candidates by first byte and draws among those allowed; only when none of them is (``top_p`` cut them
  all) does it filter the whole vocabulary before the chain, as llama.cpp would.
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
_REDRAWS = 32  # draws sampling tries after a refusal before it checks all of the chain's candidates
_NO_TEXT, _END = 256, 257  # first-byte codes of tokens without text and of ends of generation


@dataclass(frozen=True, slots=True)
class TokenBytes:
    """A vocabulary by the first byte of each token's text, for the grammar fallback.

    ``first`` is each token's code: its first byte, ``_NO_TEXT`` or ``_END`` (an end of generation, which the
    grammar allows once it is done); ``by_first`` holds the token ids by code, code ``c``'s from ``starts[c]``
    to ``starts[c + 1]``; ``single`` is a token of each single byte (-1: none), to probe the grammar with.
    """

    first: Any  # numpy int16 array, one per token
    by_first: Any  # numpy int32 array
    starts: Any  # numpy int64 array of 259
    single: Any  # numpy int32 array of 256

    @classmethod
    def of(cls, llama: Llama) -> TokenBytes:
        """Read from ``llama``'s vocabulary, text as llama.cpp's grammar sees it (special tokens written out);
        about half a second for Gemma's 262k tokens."""
        vocab, n_vocab = llama._model.vocab, llama.n_vocab()
        first = np.full(n_vocab, _NO_TEXT, np.int16)
        single = np.full(256, -1, np.int32)
        piece = ctypes.create_string_buffer(4096)
        for token in range(n_vocab):
            if llama_cpp.llama_vocab_is_eog(vocab, token):
                first[token] = _END
                continue
            size = llama_cpp.llama_token_to_piece(vocab, token, piece, len(piece), 0, True)
            if size > 0:
                byte = piece[0][0]
                first[token] = byte
                if size == 1 and single[byte] < 0:
                    single[byte] = token
        by_first = np.argsort(first, kind="stable").astype(np.int32)
        return cls(first, by_first, np.searchsorted(first[by_first], np.arange(259)), single)


class TokenSampler:
    """Picks the tokens of one generation from the logits of one output of a llama.cpp context.

    ``llama`` gives the vocabulary; ``context`` is the ``llama_context`` the logits are read from (None: the
    Llama's own), at the batch position ``at`` last set (-1, the default: the last one evaluated), so several
    samplers can each read their own sequence's row out of one batched decode. ``grammar`` (GBNF, start rule
    ``root``) limits what may be written, ``vocabulary`` is then the model's ``TokenBytes``; ``top_logprobs``
    (None: no log-probabilities wanted) is how many alternatives ``logprob`` lists. Call ``close`` when done.
    Raises ``EngineError`` when llama.cpp cannot parse the grammar.
    """

    def __init__(
        self,
        llama: Llama,
        params: SamplingParams,
        top_logprobs: int | None,
        grammar: str | None = None,
        vocabulary: TokenBytes | None = None,
        context: Any = None,
    ) -> None:
        self._llama = llama
        self._ctx = llama.ctx if context is None else context
        self._index = -1
        self._n_vocab = llama.n_vocab()
        self._vocab = llama._model.vocab
        self._greedy = params.temperature <= 0
        self._temperature, self._top_p = params.temperature, params.top_p
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
            # Redraws: the chain's distribution without its last stage (the draw), and a random stream of their own.
            self._shape = None if self._greedy else _chain(params, self._n_vocab, draw=False)
            self._random = np.random.default_rng(None if params.seed is None else _redraw_seed(params.seed))
            self._bias = np.zeros(self._n_vocab, np.float64)
            for token, value in params.logit_bias:
                if 0 <= token < self._n_vocab:
                    self._bias[token] += value

    def close(self) -> None:
        if self._chain is not None:
            llama_cpp.llama_sampler_free(self._chain)
            self._chain = None
        if self._grammar is not None:
            llama_cpp.llama_sampler_free(self._grammar)
            self._grammar = None
            if self._shape is not None:
                llama_cpp.llama_sampler_free(self._shape)
                self._shape = None

    def at(self, index: int) -> None:
        """Read the logits of batch position ``index`` from now on (-1: the last one evaluated)."""
        self._index = index

    def next_token(self) -> int:
        """The next token, taken into the penalties' history and the grammar's state."""
        if self._grammar is None:
            if self._raw_greedy:  # what the chain would pick (its greedy stage takes the first of equal logits)
                return int(np.argmax(self._logits()))  # without filling 262k cells for it first
            return int(llama_cpp.llama_sampler_sample(self._chain, self._ctx, self._index))
        if self._history_free:  # taken into the chain at once: without penalties, to no effect
            token = int(llama_cpp.llama_sampler_sample(self._chain, self._ctx, self._index))
            if not self._allowed(token):
                token = self._likeliest_allowed(None) if self._greedy else self._drawn_allowed(None)
            return self._accepted(token)
        cells = self._fill()
        llama_cpp.llama_sampler_apply(self._chain, ctypes.byref(cells))
        token = int(cells.data[cells.selected].id)
        if not self._allowed(token):
            # The chain left its work in ``cells``: for greedy the logits in place, adjusted by bias and penalties;
            # for sampling its candidates at the temperature.
            token = self._likeliest_allowed(self._cells["logit"]) if self._greedy else self._drawn_allowed(cells)
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
        return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self._ctx, self._index), shape=(self._n_vocab,))

    def _fill(self) -> llama_cpp.llama_token_data_array:
        """The whole vocabulary in id order with its raw logits, as llama.cpp's samplers take it."""
        np.copyto(self._cells.view(np.int32), self._blank.view(np.int32))  # as raw words: a memcpy
        self._cells["logit"] = self._logits()
        return _array(self._cells)

    def _allowed(self, token: int) -> bool:
        self._one["id"], self._one["logit"] = token, 0.0
        llama_cpp.llama_sampler_apply(self._grammar, ctypes.byref(_array(self._one)))
        return bool(np.isfinite(self._one["logit"][0]))

    def _likeliest_allowed(self, adjusted: Any) -> int:
        """Greedy's pick under the grammar: the allowed token with the highest ``adjusted`` logit (None: the
        logits of the chain, computed here: the raw ones, or adjusted by the bias)."""
        if adjusted is not None:
            logits = adjusted
        elif self._raw_greedy:
            logits = self._logits()
        else:
            llama_cpp.llama_sampler_apply(self._chain, ctypes.byref(self._fill()))
            logits = self._cells["logit"]
        candidates = self._candidates()
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

    def _drawn_allowed(self, cells: llama_cpp.llama_token_data_array | None) -> int:
        """Sampling's pick under the grammar, ``cells`` holding the chain's candidates (top_p's nucleus, logits at
        the temperature), or None to have them computed."""
        if cells is None and self._top_p >= 1:  # the chain is bias, temperature, draw: all token by token
            candidates = self._candidates()
            if candidates.size <= _FEW:
                logits = self._logits()[candidates] + self._bias[candidates]
                allowed = np.isfinite(self._checked(_cells(candidates, self._logits()))["logit"])
                if allowed.any():
                    scaled = logits[allowed] / self._temperature
                    weights = np.exp(scaled - scaled.max())
                    return int(candidates[allowed][_draw(np.cumsum(weights), self._random)])
        if cells is None:
            assert self._shape is not None
            cells = self._fill()
            llama_cpp.llama_sampler_apply(self._shape, ctypes.byref(cells))
        pool = np.ctypeslib.as_array(cells.data, shape=(cells.size,))
        weights = np.exp(pool["logit"].astype(np.float64) - float(pool["logit"].max()))
        cumulative = np.cumsum(weights)
        for _ in range(_REDRAWS):
            token = int(pool["id"][_draw(cumulative, self._random)])
            if self._allowed(token):
                return token
        maybe = np.flatnonzero(self._byte_mask()[self._bytes.first[pool["id"]]])
        allowed = maybe[np.isfinite(self._checked(pool[maybe])["logit"])]
        if allowed.size:
            return int(pool["id"][allowed[_draw(np.cumsum(weights[allowed]), self._random)]])
        # Nothing the chain would draw is allowed: the grammar first, then the chain, over the whole vocabulary.
        cells = self._fill()
        candidates = self._candidates()
        checked = self._checked(self._cells[candidates])
        self._cells["logit"] = -np.inf
        self._cells["logit"][candidates] = checked["logit"]
        llama_cpp.llama_sampler_apply(self._chain, ctypes.byref(cells))
        chosen = cells.data[cells.selected]
        if not math.isfinite(chosen.logit):
            raise EngineError("the output grammar allows no token of this model here")
        return int(chosen.id)

    def _byte_mask(self) -> Any:
        """Which first-byte codes the grammar allows now (``TokenBytes.first``): a token can be allowed only if
        its first byte is; a byte no token stands for alone is taken as allowed."""
        probes = self._bytes.single
        known = np.flatnonzero(probes >= 0)
        mask = np.ones(258, dtype=bool)
        mask[_NO_TEXT] = False
        probe = np.zeros(known.size, _CELL)
        probe["id"] = probes[known]
        mask[known] = np.isfinite(self._checked(probe)["logit"])
        return mask

    def _candidates(self) -> Any:
        """The tokens of the vocabulary whose first-byte code the grammar allows now."""
        starts, by_first = self._bytes.starts, self._bytes.by_first
        return np.concatenate([by_first[starts[c] : starts[c + 1]] for c in np.flatnonzero(self._byte_mask())])

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


def _draw(cumulative: Any, random: np.random.Generator) -> int:
    """An index drawn with probability proportional to the weights whose running sum is ``cumulative``."""
    return min(int(np.searchsorted(cumulative, random.random() * cumulative[-1], side="right")), len(cumulative) - 1)


def _redraw_seed(seed: int) -> int:
    """A seed for redraws that is not the chain's: the same stream would redraw in step with its draws."""
    return (seed * 2654435761 + 1) & 0xFFFFFFFF


def _chain(params: SamplingParams, n_vocab: int, *, draw: bool = True) -> Any:
    """OpenAI's knobs only: no top-k, min-p or repeat penalty, so temperature 0 is plain greedy decoding. Without
    ``draw``, the chain up to the distribution it would draw from (no penalties: used only without them)."""
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())

    def add(sampler: Any) -> None:
        llama_cpp.llama_sampler_chain_add(chain, sampler)

    # Token ids past the vocabulary name no token of this model and are ignored, as OpenAI ignores unknown ones.
    bias = [(token, value) for token, value in params.logit_bias if 0 <= token < n_vocab]
    if bias:
        entries = (llama_cpp.llama_logit_bias * len(bias))(*(llama_cpp.llama_logit_bias(t, v) for t, v in bias))
        add(llama_cpp.llama_sampler_init_logit_bias(n_vocab, len(bias), entries))
    if draw:
        penalties = (n_vocab, PENALTY_WINDOW, 1.0, params.frequency_penalty, params.presence_penalty)
        add(llama_cpp.llama_sampler_init_penalties(*penalties))
    if params.temperature <= 0:
        add(llama_cpp.llama_sampler_init_greedy())
    else:
        seed = llama_cpp.LLAMA_DEFAULT_SEED if params.seed is None else params.seed & 0xFFFFFFFF
        add(llama_cpp.llama_sampler_init_top_p(params.top_p, 1))
        add(llama_cpp.llama_sampler_init_temp(params.temperature))
        if draw:
            add(llama_cpp.llama_sampler_init_dist(seed))
    return chain
