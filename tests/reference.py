"""Plain, obviously-correct reference implementations the fast runner must agree with.

One item at a time, one full forward per (item, choice), logits everywhere, no caches, no padding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from editgate.runner import AbilityRunner, Choices, Generate


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
    prefix = list(lm.encode(request.prefix, bos=True)) if request.prefix else []
    ids = prefix + lm.encode(request.context, bos=not request.prefix)
    generated: list[int] = []
    text = ""
    for _ in range(request.max_new_tokens):
        logits = runner.model(input_ids=torch.tensor([ids + generated])).logits[0, -1]
        token = int(logits.argmax())
        if token == lm.tokenizer.eos_token_id:
            break
        generated.append(token)
        text = lm.tokenizer.decode(generated, skip_special_tokens=True)
        if any(stop in text for stop in request.stop):
            break
    for stop in request.stop:
        if stop in text:
            text = text[: text.find(stop)]
    return text
