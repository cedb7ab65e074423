"""How the embedded engine picks each next token: OpenAI's knobs as a llama.cpp sampler chain, an optional output
grammar, and the log-probabilities of what it picked.

A grammar checked against the whole vocabulary costs more than the model's own step (Gemma has 262k tokens;
llama.cpp matches each one's text against the grammar). So, as llama.cpp's ``common_sampler`` does, the chain
samples first without the grammar and only that token is checked; when the grammar refuses it, greedy decoding
looks for the likeliest allowed token among the likeliest few, and only then (or when sampling) is the whole
vocabulary filtered and sampled again. Greedy's pick is the likeliest allowed token either way; sampling keeps
the chain's distribution over the allowed tokens, as llama.cpp's does.
"""

from __future__ import annotations

import ctypes
import math
from typing import TYPE_CHECKING, Any

import llama_cpp
import numpy as np

from cocoon.engines.base import SamplingParams, TokenLogprob, TopLogprob
from cocoon.errors import EngineError

if TYPE_CHECKING:
    from llama_cpp import Llama

PENALTY_WINDOW = 64  # tokens frequency_penalty and presence_penalty look back over (llama-cpp-python's default)
_CELL = np.dtype([("id", np.intc), ("logit", np.single), ("p", np.single)], align=True)  # llama_token_data
_GREEDY_SHORTLISTS = (64, 4096)  # candidates greedy decoding checks against the grammar before all of them


class TokenSampler:
    """Picks the tokens of one generation from the logits of ``llama``'s last evaluated position.

    ``grammar`` (GBNF, start rule ``root``) limits what may be written; ``top_logprobs`` (None: no
    log-probabilities wanted) is how many alternatives ``logprob`` lists. Call ``close`` when done.
    Raises ``EngineError`` when llama.cpp cannot parse the grammar.
    """

    def __init__(self, llama: Llama, params: SamplingParams, grammar: str | None, top_logprobs: int | None) -> None:
        self._llama = llama
        self._n_vocab = llama.n_vocab()
        self._vocab = llama._model.vocab
        self._greedy = params.temperature <= 0
        self._top_logprobs = top_logprobs
        self._pieces: dict[int, bytes] = {}
        self._chain = _chain(params, self._n_vocab)
        self._grammar: Any = None
        if grammar is not None:
            self._grammar = llama_cpp.llama_sampler_init_grammar(self._vocab, grammar.encode(), b"root")
            if not self._grammar:
                self.close()
                raise EngineError("llama.cpp could not parse the output grammar")
            self._cells = np.zeros(self._n_vocab, _CELL)
            self._ids = np.arange(self._n_vocab, dtype=np.intc)
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
        cells = self._fill()
        llama_cpp.llama_sampler_apply(self._chain, ctypes.byref(cells))
        token = int(cells.data[cells.selected].id)
        if not self._allowed(token):
            token = self._constrained(cells)
        if not llama_cpp.llama_vocab_is_eog(self._vocab, token):  # the grammar ends at an end of generation
            llama_cpp.llama_sampler_accept(self._grammar, token)
        llama_cpp.llama_sampler_accept(self._chain, token)
        return token

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
        """The whole vocabulary with its raw logits, as llama.cpp's samplers take it (they may reorder it)."""
        self._cells["id"] = self._ids
        self._cells["logit"] = self._logits()
        self._cells["p"] = 0.0
        data = self._cells.ctypes.data_as(llama_cpp.llama_token_data_p)
        return llama_cpp.llama_token_data_array(data, self._n_vocab, -1, False)

    def _allowed(self, token: int) -> bool:
        self._one["id"], self._one["logit"] = token, 0.0
        single = llama_cpp.llama_token_data_array(self._one.ctypes.data_as(llama_cpp.llama_token_data_p), 1, -1, False)
        llama_cpp.llama_sampler_apply(self._grammar, ctypes.byref(single))
        return bool(np.isfinite(self._one["logit"][0]))

    def _constrained(self, cells: llama_cpp.llama_token_data_array) -> int:
        """A token the grammar allows, after the chain's own pick was refused."""
        if self._greedy and ctypes.cast(cells.data, ctypes.c_void_p).value == self._cells.ctypes.data:
            # The chain (bias, penalties, greedy) left its adjusted logits in place: the likeliest allowed token
            # is among the likeliest few more often than not.
            for size in _GREEDY_SHORTLISTS:
                if size >= self._n_vocab:
                    break
                logits = self._cells["logit"]
                ids = np.argpartition(logits, -size)[-size:]
                ids = ids[np.lexsort((ids, -logits[ids]))]  # best first, lower id first among equals (as greedy)
                shortlist = np.ascontiguousarray(self._cells[ids])
                data = shortlist.ctypes.data_as(llama_cpp.llama_token_data_p)
                llama_cpp.llama_sampler_apply(
                    self._grammar, ctypes.byref(llama_cpp.llama_token_data_array(data, size, -1, True))
                )
                allowed = np.flatnonzero(np.isfinite(shortlist["logit"]))
                if allowed.size:
                    return int(shortlist["id"][allowed[0]])
        cells = self._fill()
        llama_cpp.llama_sampler_apply(self._grammar, ctypes.byref(cells))
        llama_cpp.llama_sampler_apply(self._chain, ctypes.byref(cells))
        chosen = cells.data[cells.selected]
        if not math.isfinite(chosen.logit):
            raise EngineError("the output grammar allows no token of this model here")
        return int(chosen.id)


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
