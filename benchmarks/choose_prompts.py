"""Measure prompt forms per ability on a dev slice the golden baselines never score.

    python benchmarks/choose_prompts.py --model smollm2-135m --abilities nli,closed_qa

The dev slice is positions [start, start + n) of the ability's stable item order: past the first
300 (the standard profile, which contains the quick profile's 50). Prints one markdown row per
(ability, prompt form) with each active metric's mean and 95 % bootstrap CI; the README's
"Prompt choice" tables come from here, and the winners go into editgate/configs/prompts.toml.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

from editgate.abilities.base import PromptStyle
from editgate.data import load_dataset, resolve_data_dir
from editgate.evaluate import evaluate, prepare
from editgate.gate import aggregate, aggregate_ci
from editgate.models import load_model
from editgate.profiles import PROFILES
from editgate.runner import AbilityRunner

# (shots, chat, options) per ability: the candidate forms (a short list: this CPU is slow).
CLASSIFY = [(0, False, {}), (0, False, {"calibrate": True}), (0, True, {}), (4, False, {}),
            (4, False, {"calibrate": True})]
CANDIDATES: dict[str, list[tuple[int, bool, dict]]] = {
    "sentiment": CLASSIFY, "nli": CLASSIFY, "closed_qa": CLASSIFY,
    "dialogue": [(0, False, {}), (0, False, {"normalize": "mean"}), (0, True, {})],
    "open_qa": [(0, False, {}), (4, False, {}), (0, True, {})],
    "ner": [(4, False, {}), (8, False, {})],
    "summarization": [(0, False, {}), (0, True, {}), (2, False, {})],
    "reasoning": [(4, False, {}), (0, True, {})],
}
DEV_SIZE = {"reasoning": 16, "summarization": 24, "ner": 40, "open_qa": 60}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--eval-dtype", default="float32", help="precision of the forwards")
    parser.add_argument("--abilities", default=",".join(CANDIDATES))
    parser.add_argument("--n", type=int, default=80, help="dev items (classification)")
    parser.add_argument("--start", type=int, default=300)
    args = parser.parse_args()
    lm = load_model(args.model, dtype=args.dtype)
    runner = AbilityRunner(lm, eval_dtype=args.eval_dtype)
    data_dir = resolve_data_dir(None)
    print("| ability | shots | chat | options | n | metrics | s |\n|---|---|---|---|---|---|---|")
    for name in args.abilities.split(","):
        base = prepare(name, data_dir, args.model, PROFILES["paper"])
        pool, candidates = base.ability.split(load_dataset(base.ability.dataset, data_dir).records)
        n = DEV_SIZE.get(name, args.n)
        dev = tuple(base.ability.select(candidates, None)[args.start:args.start + n])
        for shots, chat, options in CANDIDATES[name]:
            if chat and not lm.has_chat_template:  # e.g. Gemma's GGUF conversion drops it
                continue
            style = PromptStyle(shots, chat, options)
            run = dataclasses.replace(base, items=dev, style=style,
                                      shots=tuple(base.ability.choose_shots(pool, shots)))
            start = time.perf_counter()
            results = evaluate(run, runner)
            cells = []
            for metric in run.ability.active_metrics(True):
                low, high = aggregate_ci(results, metric.name)
                cells.append(f"{metric.name} {aggregate(results, metric.name):.3f} "
                             f"[{low:.3f}, {high:.3f}]")
            print(f"| {name} | {shots} | {chat} | {options or ''} | {len(dev)} | "
                  f"{'; '.join(cells)} | {time.perf_counter() - start:.0f} |", flush=True)


if __name__ == "__main__":
    main()
