"""Canary: how far the edited model's next-token distributions drift from the unedited model's.

On held-out WikiText-2 paragraphs (odd ``idx``; :mod:`perplexity` takes the even ones), the
unedited model's distribution P at every token is summarised by its top-``TOP_K`` tokens plus one
bucket for the rest, and cached on disk when the baseline is scored. An edited model's Q is
read at the same tokens, and the metric is −KL(P‖Q) averaged over positions (nats/token), so
the baseline scores exactly 0 and a drop is damage. Coarsening to top-k + rest can only lower
the KL (data-processing inequality): the canary never reports more drift than there is.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from safetensors.torch import load_file, save_file

from editgate.abilities.base import (
    Ability,
    AbilityRun,
    Item,
    ItemResult,
    Metric,
    Output,
    PromptStyle,
)
from editgate.abilities.perplexity import WIKITEXT, paragraphs
from editgate.cache import cache_key, cache_path, get_or_compute
from editgate.data import Record
from editgate.runner import AbilityRunner, Distributions

TOP_K = 32


def top_k(logprobs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    values, ids = logprobs.topk(TOP_K, dim=-1)
    return ids.to(torch.int32), values.float()


def _log_rest(logprobs: torch.Tensor) -> torch.Tensor:
    """log(1 − Σ exp(logprobs)) per row: the mass outside the kept tokens."""
    return torch.log1p(-logprobs.exp().sum(-1).clamp(max=1 - 1e-6))


def coarse_kl(base_ids: torch.Tensor, base_logprobs: torch.Tensor, logprobs: torch.Tensor,
              ) -> torch.Tensor:
    """KL(P‖Q) per position over {top-k tokens of P} ∪ {rest}; ``logprobs`` are Q's full rows."""
    q = logprobs.gather(-1, base_ids.long())
    p_rest, q_rest = _log_rest(base_logprobs), _log_rest(q)
    kl = (base_logprobs.exp() * (base_logprobs - q)).sum(-1)
    return kl + p_rest.exp() * (p_rest - q_rest)


class KLDrift(Ability):
    name = "kl_drift"
    title = "Canary: KL drift from the unedited model"
    dataset = WIKITEXT
    metrics = (Metric("neg_kl", "continuous", unit="nats"),)
    words = 96

    def split(self, records: Sequence[Record]) -> tuple[list[Item], list[Item]]:
        return [], paragraphs(records, parity=1, words=self.words)

    def _requests(self, run: AbilityRun, reduce: Callable[[int], Callable]) -> list[Distributions]:
        return [Distributions(f"= {item['title']} =\n", item["text"], reduce(n))
                for n, item in enumerate(run.items)]

    def evaluate(self, run: AbilityRun, runner: AbilityRunner, state: str,
                 progress: Callable[[int], None] | None = None) -> list[ItemResult]:
        path = cache_path("kl-base", cache_key(run=run.key(), model=runner.fingerprint,
                                               top_k=TOP_K), ".safetensors")
        if state == "base":
            def compute() -> dict[str, torch.Tensor]:
                found = runner.distributions(self._requests(run, lambda n: top_k), progress)
                return {f"{kind}.{n}": pair[j] for n, pair in enumerate(found)
                        for j, kind in enumerate(("ids", "logprobs"))}

            base = get_or_compute(path, compute, lambda value, tmp: save_file(value, str(tmp)),
                                  lambda p: load_file(str(p)))
            # KL(P‖P) = 0 by definition: no second pass over the unedited model.
            return [self.score(item, {"kl": torch.zeros(len(base[f"ids.{n}"]))})
                    for n, item in enumerate(run.items)]
        if not path.exists():
            raise RuntimeError(f"{self.name}: the unedited model's distributions are not cached "
                               f"({path}); score the baseline before editing")
        base = load_file(str(path))
        reduce = lambda n: lambda logprobs, targets: coarse_kl(
            base[f"ids.{n}"], base[f"logprobs.{n}"], logprobs)
        kls = runner.distributions(self._requests(run, reduce), progress)
        return [self.score(item, {"kl": kl}) for item, kl in zip(run.items, kls)]

    def score(self, item: Item, outputs: Mapping[str, Output],
              style: PromptStyle | None = None) -> ItemResult:
        kl = outputs["kl"]
        return ItemResult(item.id, f"{len(kl)} positions", item["title"],
                          {"neg_kl": 0.0 - float(kl.mean())})  # 0.0, not -0.0, at baseline
