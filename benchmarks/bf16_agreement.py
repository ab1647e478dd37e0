"""Should evaluation run in bfloat16? Per-item agreement with float32 and the gate's verdict.

    python benchmarks/bf16_agreement.py --profile quick [--variant autocast|weights]

Scores every ability twice on the same items and prompts — float32, then bfloat16 (``autocast``:
the runner's bf16 evaluation of float32 weights, editgate's default; ``weights``: the model
loaded in bfloat16) — and prints, per ability: the time of each, the share of items whose
prediction is unchanged, the largest per-item change of every metric, and the paired gate run as
if bf16 were an edit of the fp32 model (with the tolerances of ability_tests/tolerances.toml).
bf16 is safe as a default only if no gate would fire on it and no above-chance verdict flips.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from editgate.data import resolve_data_dir
from editgate.evaluate import evaluate, prepare
from editgate.gate import Tolerances, aggregate, aggregate_ci, paired_gate
from editgate.models import load_model
from editgate.profiles import PROFILES
from editgate.registry import ABILITIES
from editgate.runner import AbilityRunner

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--abilities", default=",".join(ABILITIES.names()))
    parser.add_argument("--variant", choices=("autocast", "weights"), default="autocast")
    args = parser.parse_args()
    tolerances = Tolerances.load(ROOT / "ability_tests" / "tolerances.toml")
    fp32 = load_model(dtype="float32")
    runners = {"float32": AbilityRunner(fp32, eval_dtype="float32"),
               "bfloat16": (AbilityRunner(fp32, eval_dtype="bfloat16") if args.variant == "autocast"
                            else AbilityRunner(load_model(dtype="bfloat16")))}
    print("| ability | metric | fp32 | bf16 | agree | max abs diff | gate (bf16 as edit) | "
          "fp32 s | bf16 s |\n|---|---|---|---|---|---|---|---|---|")
    for name in args.abilities.split(","):
        run = prepare(name, resolve_data_dir(None), "smollm2-135m", PROFILES[args.profile],
                      args.limit)
        results, seconds = {}, {}
        for dtype, runner in runners.items():
            start = time.perf_counter()
            results[dtype] = evaluate(run, runner)  # each dtype its own unedited baseline
            seconds[dtype] = time.perf_counter() - start
        fp32, bf16 = results["float32"], results["bfloat16"]
        agree = sum(a.prediction == b.prediction for a, b in zip(fp32, bf16)) / len(fp32)
        for metric in run.ability.active_metrics(run.generation):
            diff = max(abs(a.metrics[metric.name] - b.metrics[metric.name])
                       for a, b in zip(fp32, bf16))
            gate = paired_gate(name, metric.name, fp32, bf16,
                               tolerances.tolerance(name, metric.name))
            cells = []
            for res in (fp32, bf16):
                low, high = aggregate_ci(res, metric.name)
                above = "" if metric.chance is None else (" ✓" if low > metric.chance else " ✗")
                cells.append(f"{aggregate(res, metric.name):.3f} [{low:.3f}, {high:.3f}]{above}")
            print(f"| {name} | {metric.name} | {cells[0]} | {cells[1]} | {agree:.3f} | {diff:.4f} | "
                  f"{'pass' if gate.passed else 'FAIL'} Δ {gate.delta:+.4f} | "
                  f"{seconds['float32']:.1f} | {seconds['bfloat16']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
