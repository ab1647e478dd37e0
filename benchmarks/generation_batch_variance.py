"""Does a greedy answer depend on the batch it was generated in? (Why generation stays float32.)

    python benchmarks/generation_batch_variance.py [--dtypes bfloat16,float32] [--batch-sizes 16,5]

Generates the standard profile's GSM8K and SAMSum answers on SmolLM2 with each generation batch
size, per precision, and counts the answers that differ between the batch sizes. Nothing but the
batch shape changes, so every difference is rounding: in a gate, an edit that changes one answer's
length regroups the continuous batches and could change other answers through it.
"""

from __future__ import annotations

import argparse
import time

from editgate.data import resolve_data_dir
from editgate.evaluate import prepare
from editgate.models import load_model
from editgate.profiles import PROFILES
from editgate.runner import AbilityRunner, Generate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dtypes", default="bfloat16,float32")
    parser.add_argument("--batch-sizes", default="16,5")
    parser.add_argument("--reasoning", type=int, default=24, help="GSM8K items")
    parser.add_argument("--summarization", type=int, default=16, help="SAMSum items")
    args = parser.parse_args()
    lm, data_dir = load_model("smollm2-135m"), resolve_data_dir(None)
    requests: list[Generate] = []
    for name in ("reasoning", "summarization"):
        run = prepare(name, data_dir, "smollm2-135m", PROFILES["standard"],
                      limit=getattr(args, name))
        requests += [r for item in run.items
                     for r in run.ability.requests(item, run.shots, run.style, lm, True).values()
                     if isinstance(r, Generate)]
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    for dtype in args.dtypes.split(","):
        answers = {}
        for size in sizes:
            runner = AbilityRunner(lm, eval_dtype=dtype, generation_dtype=dtype,
                                   generation_batch_size=size)
            start = time.perf_counter()
            answers[size] = runner.generate(requests)
            print(f"{dtype}, batch {size}: {time.perf_counter() - start:.0f} s", flush=True)
        differ = sum(len({answers[s][i] for s in sizes}) > 1 for i in range(len(requests)))
        print(f"{dtype}: {differ} of {len(requests)} answers differ between batch sizes "
              f"{args.batch_sizes}", flush=True)


if __name__ == "__main__":
    main()
