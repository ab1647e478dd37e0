"""Plain, obviously-correct reference implementations the fast runner must agree with.

One item at a time, one full forward per (item, choice), logits everywhere, no caches, no padding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from editgate.runner import AbilityRunner, Choices, ChoiceScores, Distributions, Generate


@torch.no_grad()
def reference_loglikelihood(runner: AbilityRunner, request: Choices) -> list[tuple[float, bool]]:
    tokens = runner.tokenize_choices(request)
    context = list(tokens.prefix) + tokens.context
    scores = []
    for continuation in tokens.continuations:
        ids = torch.tensor([context + continuation])
        logits = runner.model(input_ids=ids).logits[0].float()
        logprobs = F.log_softmax(logits[len(context) - 1:-1], dim=-1)
        target = torch.tensor(continuation)
        scores.append((float(logprobs.gather(1, target[:, None]).sum()),
                       bool((logprobs.argmax(-1) == target).all())))
    return scores


@torch.no_grad()
def reference_generate(runner: AbilityRunner, request: Generate) -> str:
    lm = runner.lm
    prefix, body = runner.split_prompt(request.prefix, request.context)
    ids = list(prefix) + body
    generated: list[int] = []
    text = ""
    for _ in range(request.max_new_tokens):
        logits = runner.model(input_ids=torch.tensor([ids + generated])).logits[0, -1]
        token = int(logits.argmax())
        if token == lm.tokenizer.eos_token_id:
            break
        generated.append(token)
        text = lm.tokenizer.decode(generated, skip_special_tokens=True)
        if _stop_position(text, request.stop) is not None:
            break
    position = _stop_position(text, request.stop)
    return text if position is None else text[:position]


def _stop_position(text: str, stops) -> int | None:
    """Earliest stop string that follows some non-blank text (a leading newline is not an end)."""
    start = len(text) - len(text.lstrip())
    if start == len(text):
        return None
    positions = [text.find(stop, start) for stop in stops if text.find(stop, start) != -1]
    return min(positions) if positions else None


class ReferenceRunner:
    """The runner's interface, one request at a time through the plain functions above."""

    def __init__(self, runner: AbilityRunner) -> None:
        self.runner = runner
        self.lm = runner.lm
        self.fingerprint = runner.fingerprint
        self.precision = runner.precision  # the reference scores in the runner's precision

    def loglikelihood(self, requests, progress=None) -> list[ChoiceScores]:
        out = []
        for request in requests:
            scores = reference_loglikelihood(self.runner, request)
            counts = tuple(len(c) for c in self.runner.tokenize_choices(request).continuations)
            out.append(ChoiceScores(tuple(lp for lp, _ in scores), counts,
                                    tuple(g for _, g in scores)))
        return out

    def generate(self, requests, progress=None) -> list[str]:
        return [reference_generate(self.runner, r) for r in requests]

    @torch.no_grad()
    def distributions(self, requests: list[Distributions], progress=None) -> list:
        out = []
        for request in requests:
            tokens = self.runner.tokenize_choices(Choices(request.context, (request.continuation,),
                                                          request.prefix))
            context, target = list(tokens.prefix) + tokens.context, tokens.continuations[0]
            logits = self.runner.model(input_ids=torch.tensor([context + target])).logits[0]
            logprobs = F.log_softmax(logits[len(context) - 1:-1].float(), dim=-1)
            out.append(request.reduce(logprobs, torch.tensor(target)))
        return out


def agreement(ours: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    """(cosine, relative Frobenius error ‖ours − reference‖ / ‖reference‖), in float64: how
    editgate's editors are compared with their reference implementations' outputs."""
    a, b = ours.double().flatten(), reference.double().flatten()
    return float(a @ b / (a.norm() * b.norm())), float((a - b).norm() / b.norm())
