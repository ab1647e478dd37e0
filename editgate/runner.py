"""AbilityRunner: executes the two request kinds every ability is built from.

* :class:`Choices` — log-likelihood of each continuation given a context (classification,
  multiple choice, the log-prob of a gold answer or reference text).
* :class:`Generate` — greedy generation with stop strings and a token cap.

Where the speed comes from (fp32 on a CPU is bound by matmul FLOPs, so the runner does less work):

1. Logits only where they are scored. The decoder runs to hidden states; the LM head (20 % of
   SmolLM2's FLOPs, far more for Gemma's 262k vocabulary) is applied to the gathered positions only.
2. A shared prefix (few-shot examples, an instruction) is run once; its KV cache is reused by
   every item that starts with it.
3. One context per item across its choices: the item's context is run once, its KV rows are
   repeated for the choices, and only the continuation tokens are run again.
4. Items are sorted by length and batched under a token budget, so padding stays small.
5. Generation drops finished rows from the batch (and their KV rows) instead of carrying them.

Token ids are always ``prefix_ids + context_ids + continuation_ids`` with each part tokenised on
its own (BOS, when the model wants one, goes at the very start). The reference scorer in the tests
builds the same ids and runs one plain forward per (item, choice); the runner must agree with it.
"""

from __future__ import annotations

import copy
import inspect
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from editgate.models import LoadedModel

RUNNER_VERSION = "1"  # part of every results-cache key: bump when scores could change


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


@dataclass
class _Tokenized:
    prefix: tuple[int, ...]
    context: list[int]
    continuations: list[list[int]]


class AbilityRunner:
    """Batched scoring and generation on one model. Stateless apart from the prefix KV memo."""

    def __init__(self, lm: LoadedModel, *, max_batch_tokens: int = 4096, max_batch_size: int = 32,
                 generation_batch_size: int = 16) -> None:
        self.lm = lm
        self.model = lm.model
        self.decoder = lm.decoder
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_size = max_batch_size
        self.generation_batch_size = generation_batch_size
        self.pad_id = lm.tokenizer.pad_token_id
        # Sliding-window attention counts cache slots, not tokens: padding inside the window would
        # shift it. Rows whose sequence outgrows the window are batched only with equal lengths.
        layer_types = getattr(lm.config, "layer_types", None) or ()
        self.window = (getattr(lm.config, "sliding_window", None)
                       if "sliding_attention" in layer_types else None)
        # transformers 5.x renamed `past_key_values` to `cache`; accept both.
        params = inspect.signature(self.decoder.forward).parameters
        self.cache_kwarg = "cache" if "cache" in params else "past_key_values"

    # ------------------------------------------------------------------ helpers

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm.head_logits(hidden)

    def _tokenize_prefix(self, prefix: str) -> tuple[int, ...]:
        return tuple(self.lm.encode(prefix, bos=True)) if prefix else ()

    def _tokenize_body(self, prefix: str, text: str) -> list[int]:
        return self.lm.encode(text, bos=not prefix)

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
                 body: Sequence[int], span: Sequence[int], past: int) -> list[list[int]]:
        """Consecutive runs of ``order`` under the token budget (rows × max ``cost``) and row cap.

        ``body[i]`` is row i's padded part, ``span[i]`` all positions it will occupy after the
        prefix. With sliding-window attention, a batch whose longest row outgrows the window only
        holds rows of one body length, so no padding sits inside anyone's window.
        """
        batches: list[list[int]] = []
        current: list[int] = []
        worst_cost = longest_span = 0
        for index in order:
            new_cost, new_span = max(worst_cost, cost[index]), max(longest_span, span[index])
            needs_exact = (self.window is not None and past + new_span > self.window
                           and any(body[j] != body[index] for j in current))
            if current and (new_cost * (len(current) + 1) > self.max_batch_tokens
                            or len(current) >= cap or needs_exact):
                batches.append(current)
                current, new_cost, new_span = [], cost[index], span[index]
            current.append(index)
            worst_cost, longest_span = new_cost, new_span
        if current:
            batches.append(current)
        return batches

    # ------------------------------------------------------------------ log-likelihood

    def tokenize_choices(self, request: Choices) -> _Tokenized:
        prefix = self._tokenize_prefix(request.prefix)
        context_text, conts = request.context, list(request.continuations)
        stripped = context_text.rstrip(" ")
        if stripped != context_text:
            conts = [context_text[len(stripped):] + c for c in conts]
        context = self._tokenize_body(request.prefix, stripped)
        continuations = [self.lm.encode(c) for c in conts]
        if not context and not prefix:
            raise ValueError("a Choices request needs a non-empty context or prefix")
        if any(not c for c in continuations):
            raise ValueError(f"empty continuation in {request.continuations!r}")
        return _Tokenized(prefix, context, continuations)

    @torch.no_grad()
    def loglikelihood(self, requests: Sequence[Choices], progress=None) -> list[ChoiceScores]:
        """Scores for every request, in input order. ``progress(n)`` is called as items finish."""
        tokenized = [self.tokenize_choices(r) for r in requests]
        results: list[ChoiceScores | None] = [None] * len(requests)
        by_prefix: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for index, tok in enumerate(tokenized):
            by_prefix[tok.prefix].append(index)
        for prefix_ids, indices in by_prefix.items():
            prefix_cache = self._prefix_cache(prefix_ids)
            lengths = [0] * len(tokenized)
            for i in indices:
                longest_cont = max(len(c) for c in tokenized[i].continuations)
                lengths[i] = len(tokenized[i].context) + longest_cont * len(
                    tokenized[i].continuations)
            order = sorted(indices, key=lambda i: -len(tokenized[i].context))
            body = [len(t.context) for t in tokenized]
            span = [len(t.context) + max(map(len, t.continuations)) for t in tokenized]
            for batch in self._batches(order, lengths, self.max_batch_size, body, span,
                                       len(prefix_ids)):
                for i, scores in zip(batch, self._score_batch(
                        [tokenized[i] for i in batch], prefix_ids, prefix_cache)):
                    results[i] = scores
                if progress is not None:
                    progress(len(batch))
        return results  # type: ignore[return-value]

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
        # Chunk the rows so the repeated KV stays within the token budget.
        past_len = mask.shape[1]
        chunk = max(1, self.max_batch_tokens // max(past_len, 1))
        for start in range(0, len(rows), chunk):
            sel = list(range(start, min(start + chunk, len(rows))))
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
            for r, s in enumerate(sel):
                targets = torch.tensor(row_tokens[s][1:], device=device)
                logprobs = F.log_softmax(self.logits(hidden[r, :len(targets)]), dim=-1)
                lp = float(logprobs.gather(1, targets[:, None]).sum())
                greedy = bool((logprobs.argmax(-1) == targets).all())
                results[keys[s]] = (lp, greedy)
        return results

    # ------------------------------------------------------------------ generation

    @torch.no_grad()
    def generate(self, requests: Sequence[Generate], progress=None) -> list[str]:
        """Greedy continuations, in input order, each cut at its first stop string."""
        tokenizer = self.lm.tokenizer
        outputs: list[str | None] = [None] * len(requests)
        by_prefix: dict[str, list[int]] = defaultdict(list)
        for index, request in enumerate(requests):
            by_prefix[request.prefix].append(index)
        eos = {tokenizer.eos_token_id}
        for prefix, indices in by_prefix.items():
            prefix_ids = self._tokenize_prefix(prefix)
            prefix_cache = self._prefix_cache(prefix_ids)
            bodies = {i: self._tokenize_body(prefix, requests[i].context) for i in indices}
            order = sorted(indices, key=lambda i: -len(bodies[i]))
            body = {i: len(b) for i, b in bodies.items()}
            span = {i: len(bodies[i]) + requests[i].max_new_tokens for i in indices}
            for batch in self._batches(order, span, self.generation_batch_size, body, span,
                                       len(prefix_ids)):
                texts = self._generate_batch([bodies[i] for i in batch],
                                             [requests[i] for i in batch],
                                             prefix_ids, prefix_cache, eos)
                for i, text in zip(batch, texts):
                    outputs[i] = text
                if progress is not None:
                    progress(len(batch))
        return outputs  # type: ignore[return-value]

    def _generate_batch(self, bodies, requests, prefix_ids, prefix_cache, eos) -> list[str]:
        device = self.lm.device
        tokenizer = self.lm.tokenizer
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
        hidden = self._run(ids, mask, cache, past)
        next_tokens = self.logits(hidden[:, -1]).argmax(-1)

        generated: list[list[int]] = [[] for _ in range(batch)]
        texts = [""] * batch
        active = list(range(batch))  # original row of each live batch row
        caps = [r.max_new_tokens for r in requests]
        while active:
            still: list[int] = []
            for live_row, row in enumerate(active):
                token = int(next_tokens[live_row])
                done = token in eos
                if not done:
                    generated[row].append(token)
                    texts[row] = tokenizer.decode(generated[row], skip_special_tokens=True)
                    done = (any(s in texts[row] for s in requests[row].stop)
                            or len(generated[row]) >= caps[row])
                if not done:
                    still.append(live_row)
            if not still:
                break
            keep = torch.tensor(still, device=device)
            if len(still) < len(active):
                cache.batch_select_indices(keep)
                mask = mask.index_select(0, keep)
                next_tokens = next_tokens.index_select(0, keep)
            active = [active[i] for i in still]
            mask = torch.cat([mask, torch.ones((len(active), 1), dtype=mask.dtype,
                                               device=device)], dim=1)
            step_ids = next_tokens[:, None]
            hidden = self._run(step_ids, mask, cache, mask.shape[1] - 1)
            next_tokens = self.logits(hidden[:, -1]).argmax(-1)
        return [_cut_at_stop(text, request.stop) for text, request in zip(texts, requests)]


def _cut_at_stop(text: str, stops: Sequence[str]) -> str:
    cut = len(text)
    for stop in stops:
        position = text.find(stop)
        if position != -1:
            cut = min(cut, position)
    return text[:cut]
