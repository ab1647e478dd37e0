"""AbilityRunner: executes the two request kinds every ability is built from.

* :class:`Choices` — log-likelihood of each continuation given a context (classification,
  multiple choice, the log-prob of a gold answer or reference text).
* :class:`Generate` — greedy generation with stop strings and a token cap.

Where the speed comes from (fp32 on a CPU is bound by matmul FLOPs, so the runner does less work):

1. Logits only where they are scored. The decoder runs to hidden states; the LM head (20 % of
   SmolLM2's FLOPs, far more for Gemma's 262k vocabulary) is applied to the gathered positions only,
   a batch's rows together: each head call streams the whole head matrix from memory.
2. A shared prefix (few-shot examples, an instruction) is run once; its KV cache is reused by
   every item that starts with it.
3. One context per item across its choices: the item's context is run once, its KV rows are
   repeated for the choices, and only the continuation tokens are run again. Where that second
   forward costs more than it saves — a single continuation, or a context shorter than the
   continuations (PIQA, WinoGrande, reference solutions) — each (item, continuation) is one row
   of a single forward instead.
4. Items are sorted by length and cut into batches where padding plus each forward's fixed cost
   is least (an exact split by dynamic programming, under a token budget and a row cap).
5. Generation streams: a finished row leaves the batch (with its KV rows) and waiting prompts are
   prefilled and merged in, so the batch stays full and never waits for its slowest answer.
   Cache columns no live row attends to are dropped as rows leave.
6. Identical requests are run once (a calibration prompt shared by every item costs one request).
7. Mixed precision: with ``eval_dtype="bfloat16"`` (the default) the decoder's matmuls run in
   bfloat16 under autocast (a CPU with bf16 instructions multiplies faster in it) while the
   weights, the residual stream, the norms and the LM head stay float32, so an edit is applied to exact
   float32 weights and every log-prob comes out of a float32 softmax. The agreement with
   float32 evaluation is measured by ``benchmarks/bf16_agreement.py`` (README, "Precision").
   Greedy generation runs in ``generation_dtype`` (float32 by default): a bf16 answer depends
   on the batch it was generated in.

Token ids are ``prefix_ids + context_ids + continuation_ids``: prefix and context as the tokenizer
reads them jointly (split where their tokens part, see :meth:`AbilityRunner.split_prompt`), each
continuation tokenised on its own (BOS, when the model wants one, goes at the very start). The
reference scorer in the tests builds the same ids and runs one plain forward per (item, choice);
the runner must agree with it.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import math
from collections import defaultdict, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import DynamicCache

from editgate.cache import cache_key
from editgate.errors import KernelUnavailable
from editgate.fingerprint import code_fingerprint
from editgate.models import DTYPES, LoadedModel

# The precision of the suite's scoring forwards: bf16 autocast over float32 weights, faster than
# float32 and close enough for gates (its agreement and speed-up: README, "Precision").
DEFAULT_EVAL_DTYPE = "bfloat16"
# Greedy generation stays float32: bf16 rounding depends on the batch a row shares, and one flipped
# token changes the rest of the answer (benchmarks/generation_batch_variance.py). In a gate, an edit
# that shortens one answer would regroup the batches and change other answers for no reason of
# their own.
DEFAULT_GENERATION_DTYPE = "float32"
# (tokens per scoring forward, rows per forward, rows per generation batch).
DEFAULT_BATCH_LIMITS = (4096, 32, 16)
# A scoring forward's fixed cost in token equivalents: ≈ 30 ms of SmolLM2 layer launches on this
# CPU (a 16-token forward takes 33 ms, a 1,024-token one 400–500 ms) plus its LM-head call.
FORWARD_OVERHEAD_TOKENS = 128


@dataclass(frozen=True)
class Choices:
    """Score each continuation after ``prefix + context``."""

    context: str
    continuations: tuple[str, ...]
    prefix: str = ""  # shared across items (few-shot block); computed once


@dataclass(frozen=True)
class ChoiceScores:
    logprobs: tuple[float, ...]  # summed log-probability of each continuation
    token_counts: tuple[int, ...]
    is_greedy: tuple[bool, ...]  # every continuation token is the argmax

    @property
    def mean_logprobs(self) -> tuple[float, ...]:
        return tuple(lp / max(n, 1) for lp, n in zip(self.logprobs, self.token_counts))


@dataclass(frozen=True)
class Generate:
    """Greedy continuation of ``prefix + context`` until a stop string or ``max_new_tokens``."""

    context: str
    stop: tuple[str, ...] = ("\n\n",)
    max_new_tokens: int = 64
    prefix: str = ""


@dataclass(frozen=True)
class Distributions:
    """The next-token distributions at every token of ``continuation`` after ``prefix + context``.

    Full [T, vocab] log-probability rows are too big to keep for many items, so each item's rows
    go to ``reduce(logprobs, targets)`` as soon as they exist and the runner returns its result.
    """

    context: str
    continuation: str
    reduce: Callable[[torch.Tensor, torch.Tensor], Any] = field(compare=False)
    prefix: str = ""


@dataclass
class _Tokenized:
    prefix: tuple[int, ...]
    context: list[int]
    continuations: list[list[int]]


class AbilityRunner:
    """Batched scoring and generation on one model. Stateless apart from the prefix KV memo."""

    def __init__(self, lm: LoadedModel, *, eval_dtype: str = "float32",
                 generation_dtype: str = DEFAULT_GENERATION_DTYPE,
                 max_batch_tokens: int = DEFAULT_BATCH_LIMITS[0],
                 max_batch_size: int = DEFAULT_BATCH_LIMITS[1],
                 generation_batch_size: int = DEFAULT_BATCH_LIMITS[2]) -> None:
        for kind, dtype in (("eval", eval_dtype), ("generation", generation_dtype)):
            if dtype not in DTYPES:
                raise ValueError(f"unknown {kind} dtype {dtype!r}; choose one of {sorted(DTYPES)}")
        self.lm = lm
        # Autocast only lowers precision: weights already in bf16/fp16 run as they are.
        self.autocast_dtype = _autocast_dtype(lm, eval_dtype)
        self.eval_dtype = str(self.autocast_dtype or lm.dtype).removeprefix("torch.")
        self.generation_autocast_dtype = _autocast_dtype(lm, generation_dtype)
        self.generation_dtype = str(self.generation_autocast_dtype or lm.dtype
                                    ).removeprefix("torch.")
        self.model = lm.model
        self.decoder = lm.decoder
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_size = max_batch_size
        self.generation_batch_size = generation_batch_size
        self.pad_id = lm.tokenizer.pad_token_id
        # Positions per LM-head call: ~128 MB of float32 logits (682 for SmolLM2, 128 for
        # Gemma's 262k vocabulary).
        vocab = lm.model.get_output_embeddings().weight.shape[0]
        self.head_positions = max(64, (1 << 25) // vocab)
        # Sliding-window attention counts cache slots, not tokens: padding inside the window would
        # shift it. Rows whose sequence outgrows the window are batched only with equal lengths.
        layer_types = getattr(lm.config, "layer_types", None) or ()
        self.window = (getattr(lm.config, "sliding_window", None)
                       if "sliding_attention" in layer_types else None)
        # transformers 5.x renamed `past_key_values` to `cache`; accept both.
        params = inspect.signature(self.decoder.forward).parameters
        self.cache_kwarg = "cache" if "cache" in params else "past_key_values"
        self._prefix_ids: dict[str, tuple[int, ...]] = {}
        self.attention_fallback: str | None = None
        if self.autocast_dtype is not None or lm.dtype != torch.float32:
            self.attention_fallback = self._check_reduced_precision()

    # ------------------------------------------------------------------ helpers

    @property
    def fingerprint(self) -> str:
        """Part of every results key: the model, the precisions it is evaluated in, the kernels
        that run them (:func:`~editgate.fingerprint.compute_environment`), this runner's code and,
        when not the defaults, the batch limits.

        Scores are deterministic but not batch-invariant: a row's matmuls round differently in
        another batch shape, so results from other limits never mix."""
        parts: dict[str, Any] = {"environment": self.lm.environment,
                                 "code": code_fingerprint(AbilityRunner)}
        if self.autocast_dtype is not None:
            parts["autocast"] = self.eval_dtype
        if self.generation_dtype != self.eval_dtype:
            parts["generation"] = self.generation_dtype
        if self.attention_fallback is not None:
            parts["attention"] = self.attention_fallback
        limits = (self.max_batch_tokens, self.max_batch_size, self.generation_batch_size)
        if limits != DEFAULT_BATCH_LIMITS:
            parts["batch_limits"] = limits
        return cache_key(model=self.lm.fingerprint, **parts)

    def precision(self) -> contextlib.AbstractContextManager:
        """The context every forward of an evaluation runs in (autocast to ``eval_dtype``).

        Autocast re-casts each frozen weight at every forward: its cast cache keeps only weights
        that require grad. Caching them saved nothing beyond noise in generation, so the weights
        stay frozen."""
        stack = contextlib.ExitStack()
        if self.autocast_dtype is not None:
            stack.enter_context(torch.autocast(self.lm.device.type, dtype=self.autocast_dtype))
        if self.attention_fallback == "math":
            stack.enter_context(sdpa_kernel(SDPBackend.MATH))
        return stack

    def _check_reduced_precision(self) -> str | None:
        """Run a short batched forward and one decode step in ``eval_dtype``; return the
        attention fallback it needed (None, or "math").

        Not every CPU has every reduced-precision kernel: on an AMX machine with ATen capped at
        AVX2, bf16 flash attention stops in ``pack_vnni2 is only supported when avx512 is
        supported``. SDPA's math backend computes the same attention without that kernel, so the
        run falls back to it (the summary and the report say so); where even that fails, the run stops
        with one line naming ``--eval-dtype float32``."""
        for fallback in (None, "math"):
            self.attention_fallback = fallback
            try:
                with torch.no_grad(), self.precision():
                    self._probe_forward()
                return fallback
            except (RuntimeError, NotImplementedError) as exc:
                failure = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        raise KernelUnavailable(
            f"{self.eval_dtype} scoring has no working kernel on this machine ({failure}); "
            "run with --eval-dtype float32")

    def _probe_forward(self) -> None:
        """A left-padded two-row forward (long enough for blocked attention kernels) and a
        one-token step on its cache: the shapes scoring and generation use."""
        length = 160
        ids = torch.full((2, length), self.pad_id if self.pad_id is not None else 0,
                         dtype=torch.long, device=self.lm.device)
        mask = torch.ones_like(ids)
        mask[1, : length // 2] = 0
        cache = DynamicCache(config=self.lm.config)
        self._run(ids, mask, cache, 0)
        mask = torch.cat([mask, mask.new_ones((2, 1))], dim=1)
        self._run(ids[:, -1:], mask, cache, length)

    def generation_precision(self) -> contextlib.AbstractContextManager:
        """The context of generation's forwards, inside or outside :meth:`precision`."""
        if self.generation_autocast_dtype is None:
            return torch.autocast(self.lm.device.type, enabled=False)
        return torch.autocast(self.lm.device.type, dtype=self.generation_autocast_dtype)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        # The LM head in the weights' own precision: a bf16 logit near 20 is only good to ±0.06.
        with torch.autocast(self.lm.device.type, enabled=False):
            return self.lm.head_logits(hidden.to(self.lm.dtype))

    def row_logprobs(self, rows: Sequence[torch.Tensor]) -> Iterator[torch.Tensor]:
        """``log_softmax`` of the LM head at each row's hidden states ([T_i, H] → [T_i, V]).

        Rows are grouped into few head calls: a call streams the whole head matrix from memory
        (113 MB for SmolLM2), which costs more than the product itself for a short row."""
        group: list[torch.Tensor] = []
        size = 0
        for row in rows:
            if group and size + len(row) > self.head_positions:
                yield from self._group_logprobs(group)
                group, size = [], 0
            group.append(row)
            size += len(row)
        if group:
            yield from self._group_logprobs(group)

    def _group_logprobs(self, group: list[torch.Tensor]) -> Iterator[torch.Tensor]:
        logprobs = F.log_softmax(self.logits(torch.cat(group)), dim=-1)
        yield from logprobs.split([len(row) for row in group])

    def _eos_ids(self) -> set[int]:
        """The tokenizer's EOS plus the generation config's (chat models end turns differently)."""
        ids = {self.lm.tokenizer.eos_token_id}
        config_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        ids.update(config_eos if isinstance(config_eos, list) else [config_eos])
        return {i for i in ids if i is not None}

    def split_prompt(self, prefix: str, text: str) -> tuple[tuple[int, ...], list[int]]:
        """Ids of ``prefix + text`` as the tokenizer reads them *jointly*, split into a shared
        prefix part and the item's part.

        Tokenised apart, the seam can differ from the joint reading (a prefix ending "\n\n"
        before "Review" is one token alone, two in context), so the shared part is the longest
        common run of the prefix's own tokens and the joint ids: the same for every item whose
        text starts alike, and never the whole prompt.
        """
        if not prefix:
            return (), self.lm.encode(text, bos=True)
        if prefix not in self._prefix_ids:
            self._prefix_ids[prefix] = tuple(self.lm.encode(prefix, bos=True))
        alone = self._prefix_ids[prefix]
        joint = self.lm.encode(prefix + text, bos=True)
        shared = 0
        limit = min(len(alone), len(joint) - 1)
        while shared < limit and alone[shared] == joint[shared]:
            shared += 1
        return tuple(joint[:shared]), joint[shared:]

    @torch.no_grad()
    def _prefix_cache(self, prefix_ids: tuple[int, ...]) -> DynamicCache | None:
        if not prefix_ids:
            return None
        cache = DynamicCache(config=self.lm.config)
        ids = torch.tensor([prefix_ids], device=self.lm.device)
        self.decoder(input_ids=ids, use_cache=True, **{self.cache_kwarg: cache})
        return cache

    @staticmethod
    def _select_rows(cache: DynamicCache, rows: torch.Tensor) -> DynamicCache:
        """A new cache holding ``rows`` of ``cache`` (rows may repeat); ``cache`` is untouched."""
        selected = copy.copy(cache)
        selected.layers = [copy.copy(layer) for layer in cache.layers]
        selected.batch_select_indices(rows)
        return selected

    def _run(self, ids: torch.Tensor, mask: torch.Tensor, cache: DynamicCache, past: int,
             ) -> torch.Tensor:
        """Decoder forward of ``ids`` [B, L] after ``past`` cached positions; returns hidden states.

        ``mask`` covers past + current positions; position ids count only unmasked positions, so
        left padding in the middle of the sequence is invisible to the model.
        """
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, past:]
        out = self.decoder(input_ids=ids, attention_mask=mask, position_ids=positions,
                           use_cache=True, **{self.cache_kwarg: cache})
        return out.last_hidden_state

    def _batches(self, order: list[int], cost: Sequence[int], cap: int,
                 body: Sequence[int], span: Sequence[int], past: int,
                 overhead: int) -> list[list[int]]:
        """Split ``order`` into consecutive batches that minimise the padded work: a batch costs
        its rows × its largest ``cost`` (every row pads to the longest) plus ``overhead`` token
        equivalents for the forward itself, within the token budget and row ``cap``.

        Filling each batch greedily lets one long row set the width of many short ones; the exact
        split by dynamic programming over cut points pads a fraction as much (README, "Runner
        speed"). ``body[i]`` is row i's padded part, ``span[i]`` all positions it will occupy after the
        prefix. With sliding-window attention, a batch whose longest row outgrows the window only
        holds rows of one body length, so no padding sits inside anyone's window.
        """
        best = [0.0] + [math.inf] * len(order)  # best[end]: least cost of order[:end]
        cut = [0] * (len(order) + 1)
        for end in range(1, len(order) + 1):
            worst = longest = 0
            body_lengths: set[int] = set()
            for begin in range(end - 1, max(end - cap, 0) - 1, -1):
                index = order[begin]
                worst, longest = max(worst, cost[index]), max(longest, span[index])
                body_lengths.add(body[index])
                rows = end - begin
                mixed_in_window = (self.window is not None and past + longest > self.window
                                   and len(body_lengths) > 1)
                if rows > 1 and (worst * rows > self.max_batch_tokens or mixed_in_window):
                    break  # growing the batch further only makes both worse
                total = best[begin] + worst * rows + overhead
                if total < best[end]:
                    best[end], cut[end] = total, begin
        batches: list[list[int]] = []
        end = len(order)
        while end:
            batches.append(order[cut[end]:end])
            end = cut[end]
        return batches[::-1]

    # ------------------------------------------------------------------ log-likelihood

    def tokenize_choices(self, request: Choices) -> _Tokenized:
        context_text, conts = request.context, list(request.continuations)
        stripped = context_text.rstrip(" ")
        if stripped != context_text:
            conts = [context_text[len(stripped):] + c for c in conts]
        prefix, context = self.split_prompt(request.prefix, stripped)
        continuations = [self.lm.encode(c) for c in conts]
        if not context and not prefix:
            raise ValueError("a Choices request needs a non-empty context or prefix")
        if any(not c for c in continuations):
            raise ValueError(f"empty continuation in {request.continuations!r}")
        return _Tokenized(prefix, context, continuations)

    @torch.no_grad()
    def loglikelihood(self, requests: Sequence[Choices], progress=None) -> list[ChoiceScores]:
        """Scores for every request, in input order. ``progress(n)`` is called as items finish."""
        unique: dict[Choices, int] = {}
        slots = [unique.setdefault(r, len(unique)) for r in requests]
        if len(unique) < len(requests):  # score each distinct request once
            duplicates = len(requests) - len(unique)
            scores = self.loglikelihood(list(unique), progress)
            if progress is not None:
                progress(duplicates)
            return [scores[slot] for slot in slots]
        tokenized = [self.tokenize_choices(r) for r in requests]
        results: list[ChoiceScores | None] = [None] * len(requests)
        by_prefix: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for index, tok in enumerate(tokenized):
            by_prefix[tok.prefix].append(index)
        for prefix_ids, indices in by_prefix.items():
            prefix_cache = self._prefix_cache(prefix_ids)
            one_pass = [i for i in indices if _one_pass_is_cheaper(tokenized[i])]
            two_stage = [i for i in indices if not _one_pass_is_cheaper(tokenized[i])]
            self._score_one_pass(tokenized, one_pass, prefix_ids, prefix_cache, results,
                                 progress)
            lengths = [0] * len(tokenized)
            for i in two_stage:
                longest_cont = max(len(c) for c in tokenized[i].continuations)
                lengths[i] = len(tokenized[i].context) + longest_cont * len(
                    tokenized[i].continuations)
            order = sorted(two_stage, key=lambda i: -len(tokenized[i].context))
            body = [len(t.context) for t in tokenized]
            span = [len(t.context) + max(map(len, t.continuations)) for t in tokenized]
            for batch in self._batches(order, lengths, self.max_batch_size, body, span,
                                       len(prefix_ids), FORWARD_OVERHEAD_TOKENS):
                for i, scores in zip(batch, self._score_batch(
                        [tokenized[i] for i in batch], prefix_ids, prefix_cache)):
                    results[i] = scores
                if progress is not None:
                    progress(len(batch))
        return results  # type: ignore[return-value]

    def _score_one_pass(self, tokenized: list[_Tokenized], indices: list[int],
                        prefix_ids: tuple[int, ...], prefix_cache: DynamicCache | None,
                        results: list[ChoiceScores | None], progress=None) -> None:
        """Score ``indices`` with one row per (item, continuation): ``context + continuation[:-1]``
        run in a single forward, the continuation read off its last positions. For a single
        continuation, or a context shorter than the continuations, this beats running the context
        first and the continuations on its repeated KV rows (one forward instead of two, and the
        rows sort by their full length, so no tail is padded to a longer one)."""
        rows = [(i, c) for i in indices for c in range(len(tokenized[i].continuations))]
        bodies = [tokenized[i].context + tokenized[i].continuations[c][:-1] for i, c in rows]
        targets = [torch.tensor(tokenized[i].continuations[c], device=self.lm.device)
                   for i, c in rows]
        scored: dict[tuple[int, int], tuple[float, bool]] = {}
        remaining = {i: len(tokenized[i].continuations) for i in indices}
        for batch in self._row_logprobs_after(bodies, targets, prefix_ids, prefix_cache):
            finished = 0
            for r, logprobs in batch:
                item, choice = rows[r]
                scored[item, choice] = (float(logprobs.gather(1, targets[r][:, None]).sum()),
                                        bool((logprobs.argmax(-1) == targets[r]).all()))
                remaining[item] -= 1
                if remaining[item] == 0:
                    conts = tokenized[item].continuations
                    results[item] = ChoiceScores(
                        tuple(scored[item, c][0] for c in range(len(conts))),
                        tuple(len(c) for c in conts),
                        tuple(scored[item, c][1] for c in range(len(conts))))
                    finished += 1
            if progress is not None and finished:
                progress(finished)

    def _row_logprobs_after(self, bodies: Sequence[list[int]], targets: Sequence[torch.Tensor],
                            prefix_ids: tuple[int, ...], prefix_cache: DynamicCache | None,
                            ) -> Iterator[Iterator[tuple[int, torch.Tensor]]]:
        """Per batch, ``(row, logprobs [T, V])`` for rows ``body = context + target[:-1]`` scored
        at their last ``len(target)`` positions; rows run longest first under the token budget.

        Each batch is a lazy iterator: a row's [T, V] log-probs should be reduced before the next
        is made. Held all at once they were a batch's whole token budget of vocabulary rows —
        4096 × 262k float32 = 4.3 GB for Gemma, which set its peak memory."""
        lengths = [len(b) for b in bodies]
        order = sorted(range(len(bodies)), key=lambda r: -lengths[r])
        for batch in self._batches(order, lengths, self.max_batch_size, lengths, lengths,
                                   len(prefix_ids), FORWARD_OVERHEAD_TOKENS):
            hidden, _, _ = self._prefill([bodies[r] for r in batch], prefix_ids, prefix_cache)
            width = hidden.shape[1]
            scored_rows = [hidden[p, width - len(targets[r]):] for p, r in enumerate(batch)]
            yield zip(batch, self.row_logprobs(scored_rows))

    def _score_batch(self, items: list[_Tokenized], prefix_ids: tuple[int, ...],
                     prefix_cache: DynamicCache | None) -> list[ChoiceScores]:
        device = self.lm.device
        batch, past = len(items), len(prefix_ids)
        width = max(len(t.context) for t in items)
        ids = torch.full((batch, width), self.pad_id, dtype=torch.long, device=device)
        mask = torch.zeros((batch, past + width), dtype=torch.long, device=device)
        mask[:, :past] = 1
        for row, item in enumerate(items):  # left padding: every context ends at column width-1
            ids[row, width - len(item.context):] = torch.tensor(item.context, device=device)
            mask[row, past + width - len(item.context):] = 1
        cache = (self._select_rows(prefix_cache, torch.zeros(batch, dtype=torch.long,
                                                             device=device))
                 if prefix_cache is not None else DynamicCache(config=self.lm.config))
        hidden = self._run(ids, mask, cache, past)
        first_logprobs = F.log_softmax(self.logits(hidden[:, -1]), dim=-1)  # [B, V]

        # Stage 2: continuation tokens after the first, run on repeated context KV rows.
        rows, row_tokens = [], []
        for item_index, item in enumerate(items):
            for cont in item.continuations:
                if len(cont) > 1:
                    rows.append(item_index)
                    row_tokens.append(cont)
        later: dict[tuple[int, int], tuple[float, bool]] = {}
        if rows:
            later = self._score_tails(items, rows, row_tokens, cache, mask)

        results = []
        tail_cursor: dict[int, int] = defaultdict(int)
        for item_index, item in enumerate(items):
            logprobs, greedy = [], []
            for cont in item.continuations:
                lp = float(first_logprobs[item_index, cont[0]])
                is_greedy = bool(first_logprobs[item_index].argmax() == cont[0])
                if len(cont) > 1:
                    tail_lp, tail_greedy = later[(item_index, tail_cursor[item_index])]
                    tail_cursor[item_index] += 1
                    lp += tail_lp
                    is_greedy = is_greedy and tail_greedy
                logprobs.append(lp)
                greedy.append(is_greedy)
            results.append(ChoiceScores(tuple(logprobs),
                                        tuple(len(c) for c in item.continuations), tuple(greedy)))
        return results

    def _score_tails(self, items, rows, row_tokens, cache, mask):
        device = self.lm.device
        results: dict[tuple[int, int], tuple[float, bool]] = {}
        seen: dict[int, int] = defaultdict(int)
        keys = []
        for item_index in rows:
            keys.append((item_index, seen[item_index]))
            seen[item_index] += 1
        # Longest tails first, chunked so the repeated KV plus the padded tails stay within the
        # token budget: a short tail never pads to a long one in another chunk.
        past_len = mask.shape[1]
        by_length = sorted(range(len(rows)), key=lambda s: -len(row_tokens[s]))
        chunks: list[list[int]] = []
        for s in by_length:
            if chunks:
                widest = len(row_tokens[chunks[-1][0]]) - 1
                if (len(chunks[-1]) + 1) * (past_len + widest) <= self.max_batch_tokens:
                    chunks[-1].append(s)
                    continue
            chunks.append([s])
        for sel in chunks:
            row_index = torch.tensor([rows[s] for s in sel], device=device)
            inputs = [row_tokens[s][:-1] for s in sel]
            width = max(len(x) for x in inputs)
            ids = torch.full((len(sel), width), self.pad_id, dtype=torch.long, device=device)
            tail_mask = torch.zeros((len(sel), width), dtype=torch.long, device=device)
            for r, tokens in enumerate(inputs):  # right padding: only valid positions are read
                ids[r, :len(tokens)] = torch.tensor(tokens, device=device)
                tail_mask[r, :len(tokens)] = 1
            full_mask = torch.cat([mask.index_select(0, row_index), tail_mask], dim=1)
            hidden = self._run(ids, full_mask, self._select_rows(cache, row_index), past_len)
            targets = [torch.tensor(row_tokens[s][1:], device=device) for s in sel]
            scored_rows = [hidden[r, :len(t)] for r, t in enumerate(targets)]
            for s, target, logprobs in zip(sel, targets, self.row_logprobs(scored_rows)):
                lp = float(logprobs.gather(1, target[:, None]).sum())
                greedy = bool((logprobs.argmax(-1) == target).all())
                results[keys[s]] = (lp, greedy)
        return results

    # ------------------------------------------------------------------ distributions

    @torch.no_grad()
    def distributions(self, requests: Sequence[Distributions], progress=None) -> list[Any]:
        """``request.reduce(logprobs [T, V], targets [T])`` for every request, in input order."""
        tokenized = [self.tokenize_choices(Choices(r.context, (r.continuation,), r.prefix))
                     for r in requests]
        results: list[Any] = [None] * len(requests)
        by_prefix: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for index, tok in enumerate(tokenized):
            by_prefix[tok.prefix].append(index)
        for prefix_ids, indices in by_prefix.items():
            prefix_cache = self._prefix_cache(prefix_ids)
            bodies = [tokenized[i].context + tokenized[i].continuations[0][:-1] for i in indices]
            targets = [torch.tensor(tokenized[i].continuations[0], device=self.lm.device)
                       for i in indices]
            for batch in self._row_logprobs_after(bodies, targets, prefix_ids, prefix_cache):
                done = 0
                for r, logprobs in batch:
                    results[indices[r]] = requests[indices[r]].reduce(logprobs, targets[r])
                    done += 1
                if progress is not None:
                    progress(done)
        return results

    # ------------------------------------------------------------------ generation

    def _prefill(self, bodies: Sequence[list[int]], prefix_ids: tuple[int, ...],
                 prefix_cache: DynamicCache | None,
                 ) -> tuple[torch.Tensor, DynamicCache, torch.Tensor]:
        """Left-padded forward of ``bodies`` after the shared prefix: (hidden, cache, mask)."""
        device = self.lm.device
        batch, past = len(bodies), len(prefix_ids)
        width = max(len(b) for b in bodies)
        ids = torch.full((batch, width), self.pad_id, dtype=torch.long, device=device)
        mask = torch.zeros((batch, past + width), dtype=torch.long, device=device)
        mask[:, :past] = 1
        for row, body in enumerate(bodies):
            ids[row, width - len(body):] = torch.tensor(body, device=device)
            mask[row, past + width - len(body):] = 1
        cache = (self._select_rows(prefix_cache, torch.zeros(batch, dtype=torch.long,
                                                             device=device))
                 if prefix_cache is not None else DynamicCache(config=self.lm.config))
        return self._run(ids, mask, cache, past), cache, mask

    @torch.no_grad()
    def generate(self, requests: Sequence[Generate], progress=None) -> list[str]:
        """Greedy continuations, in input order, each cut at its first stop string."""
        outputs: list[str | None] = [None] * len(requests)
        by_prefix: dict[tuple[int, ...], list[int]] = defaultdict(list)
        bodies: dict[int, list[int]] = {}
        for index, request in enumerate(requests):
            prefix_ids, bodies[index] = self.split_prompt(request.prefix, request.context)
            by_prefix[prefix_ids].append(index)
        eos = self._eos_ids()
        with self.generation_precision():
            self._generate_groups(requests, by_prefix, bodies, eos, outputs, progress)
        return outputs  # type: ignore[return-value]

    def _generate_groups(self, requests, by_prefix, bodies, eos, outputs, progress) -> None:
        for prefix_ids, indices in by_prefix.items():
            prefix_cache = self._prefix_cache(prefix_ids)
            order = sorted(indices, key=lambda i: -len(bodies[i]))
            if self.window is None:
                finished = self._generate_stream(order, bodies, requests, prefix_ids,
                                                 prefix_cache, eos)
            else:
                finished = self._generate_batches(order, bodies, requests, prefix_ids,
                                                  prefix_cache, eos)
            for i, text in finished:
                outputs[i] = _cut_at_stop(text, requests[i].stop)
                if progress is not None:
                    progress(1)

    def _generate_stream(self, order, bodies, requests, prefix_ids, prefix_cache, eos,
                         ) -> Iterator[tuple[int, str]]:
        """Continuous batching: refill freed rows from ``order`` (longest prompts first, so a
        joining row is padded to the running cache length rather than growing it)."""
        queue = deque(order)
        cap = self.generation_batch_size
        rows: list[_Row] = []
        cache: DynamicCache | None = None
        mask = next_tokens = torch.empty(0)
        while queue or rows:
            free = cap - len(rows)
            if queue and (not rows or free >= max(1, cap // 4)):  # refill in chunks: fewer merges
                joining = [queue.popleft() for _ in range(min(free, len(queue)))]
                for chunk in self._prefill_chunks(joining, bodies):
                    hidden, new_cache, new_mask = self._prefill([bodies[i] for i in chunk],
                                                                prefix_ids, prefix_cache)
                    new_tokens = self.logits(hidden[:, -1]).argmax(-1)
                    rows += [_Row(i, requests[i]) for i in chunk]
                    if cache is None:
                        cache, mask, next_tokens = new_cache, new_mask, new_tokens
                    else:
                        mask = _merge_caches(cache, mask, new_cache, new_mask)
                        next_tokens = torch.cat([next_tokens, new_tokens])
            live = []
            for r, row in enumerate(rows):
                if row.push(int(next_tokens[r]), eos, self.lm.tokenizer):
                    yield row.index, row.text
                else:
                    live.append(r)
            if not live:
                rows, cache = [], None
                continue
            assert cache is not None
            if len(live) < len(rows):
                keep = torch.tensor(live, device=mask.device)
                cache.batch_select_indices(keep)
                mask, next_tokens = mask.index_select(0, keep), next_tokens.index_select(0, keep)
                rows = [rows[r] for r in live]
                mask = _drop_dead_columns(cache, mask)
            mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=1)
            hidden = self._run(next_tokens[:, None], mask, cache, mask.shape[1] - 1)
            next_tokens = self.logits(hidden[:, -1]).argmax(-1)

    def _prefill_chunks(self, indices: list[int], bodies) -> list[list[int]]:
        """Split joining rows so one prefill forward stays within the token budget."""
        chunks: list[list[int]] = [[]]
        for i in indices:
            width = max([len(bodies[j]) for j in chunks[-1]] + [len(bodies[i])])
            if chunks[-1] and width * (len(chunks[-1]) + 1) > self.max_batch_tokens:
                chunks.append([])
            chunks[-1].append(i)
        return chunks

    def _generate_batches(self, order, bodies, requests, prefix_ids, prefix_cache, eos,
                          ) -> Iterator[tuple[int, str]]:
        """Fixed batches for sliding-window models, where padding must not enter the window."""
        body = {i: len(b) for i, b in bodies.items()}
        span = {i: len(bodies[i]) + requests[i].max_new_tokens for i in order}
        # A generation batch decodes step by step, so each is charged a whole token budget:
        # the split keeps batches few and only then trims padding.
        for batch in self._batches(order, span, self.generation_batch_size, body, span,
                                   len(prefix_ids), overhead=self.max_batch_tokens):
            hidden, cache, mask = self._prefill([bodies[i] for i in batch], prefix_ids,
                                                prefix_cache)
            next_tokens = self.logits(hidden[:, -1]).argmax(-1)
            rows = [_Row(i, requests[i]) for i in batch]
            while rows:
                live = []
                for r, row in enumerate(rows):
                    if row.push(int(next_tokens[r]), eos, self.lm.tokenizer):
                        yield row.index, row.text
                    else:
                        live.append(r)
                if not live:
                    break
                if len(live) < len(rows):
                    keep = torch.tensor(live, device=mask.device)
                    cache.batch_select_indices(keep)
                    mask, next_tokens = mask.index_select(0, keep), next_tokens.index_select(0, keep)
                    rows = [rows[r] for r in live]
                mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=1)
                hidden = self._run(next_tokens[:, None], mask, cache, mask.shape[1] - 1)
                next_tokens = self.logits(hidden[:, -1]).argmax(-1)


@dataclass
class _Row:
    """One request being generated: its tokens so far and whether it is done."""

    index: int
    request: Generate
    tokens: list[int] = field(default_factory=list)
    text: str = ""

    def push(self, token: int, eos: set[int], tokenizer) -> bool:
        """Append ``token``; True when the row is finished (EOS, a stop string, or the cap)."""
        if token in eos:
            return True
        self.tokens.append(token)
        self.text = tokenizer.decode(self.tokens, skip_special_tokens=True)
        return (_find_stop(self.text, self.request.stop) is not None
                or len(self.tokens) >= self.request.max_new_tokens)


def _autocast_dtype(lm: LoadedModel, dtype: str) -> torch.dtype | None:
    """The autocast dtype that runs float32 weights in ``dtype``; None for exact forwards."""
    return DTYPES[dtype] if lm.dtype == torch.float32 and dtype != "float32" else None


def _one_pass_is_cheaper(item: _Tokenized) -> bool:
    """Whether running the context once per continuation costs no more tokens than the
    continuations themselves (always so for a single continuation)."""
    continuations = item.continuations
    return (len(continuations) - 1) * len(item.context) <= sum(map(len, continuations))


def _merge_caches(cache: DynamicCache, mask: torch.Tensor, other: DynamicCache,
                  other_mask: torch.Tensor) -> torch.Tensor:
    """Append ``other``'s rows to ``cache`` in place, left-padding the shorter one with masked
    columns so both end at the same column; returns the merged mask. Masked columns are
    invisible: positions come from the mask's cumulative sum, not from column indices."""
    length = max(mask.shape[1], other_mask.shape[1])
    pad = lambda t, n: torch.cat([t.new_zeros((*t.shape[:-2], n, t.shape[-1])), t], dim=-2)
    for layer, extra in zip(cache.layers, other.layers):
        mine, theirs = length - layer.keys.shape[-2], length - extra.keys.shape[-2]
        layer.keys = torch.cat([pad(layer.keys, mine), pad(extra.keys, theirs)])
        layer.values = torch.cat([pad(layer.values, mine), pad(extra.values, theirs)])
    widen = lambda m: torch.cat([m.new_zeros((m.shape[0], length - m.shape[1])), m], dim=1)
    return torch.cat([widen(mask), widen(other_mask)])


def _drop_dead_columns(cache: DynamicCache, mask: torch.Tensor) -> torch.Tensor:
    """Remove cache columns masked for every live row (left over from rows that left)."""
    alive = mask.any(0)
    if bool(alive.all()):
        return mask
    columns = alive.nonzero().squeeze(1)
    for layer in cache.layers:
        layer.keys = layer.keys.index_select(-2, columns)
        layer.values = layer.values.index_select(-2, columns)
    return mask.index_select(1, columns)


def _find_stop(text: str, stops: Sequence[str]) -> int | None:
    """Where the first stop string starts, searching only after the first non-blank character:
    a model that opens its answer with a newline has not finished it."""
    body = len(text) - len(text.lstrip())
    found = [p for p in (text.find(stop, body) for stop in stops) if p != -1]
    return min(found) if body < len(text) and found else None


def _cut_at_stop(text: str, stops: Sequence[str]) -> str:
    position = _find_stop(text, stops)
    return text if position is None else text[:position]
