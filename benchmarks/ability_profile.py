"""Wall time and peak memory of scoring each ability once, on the packaged data.

    python benchmarks/ability_profile.py --model gemma3-270m --abilities kl_drift,perplexity

Each ability is scored on the profile's items as an *edited* state would be (the KL canary reads
the cached baseline distributions; nothing is read from the results cache). The peak is the
process's resident high-water mark, reset before each ability (Linux ``/proc/self/clear_refs``),
so a row says what that ability adds on top of the loaded model.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from editgate.data import resolve_data_dir
from editgate.evaluate import evaluate
from editgate.profiles import get_profile
from editgate.registry import ABILITIES
from editgate.runner import DEFAULT_EVAL_DTYPE
from editgate.session import EditgateSession, Settings

GIB = 2**20  # /proc/self/status reports kB


def memory() -> tuple[float, float]:
    """(resident now, resident high-water mark) of this process, in GiB."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return (int(fields["VmRSS"].split()[0]) / GIB, int(fields["VmHWM"].split()[0]) / GIB)


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--eval-dtype", default=DEFAULT_EVAL_DTYPE)
    parser.add_argument("--abilities", default=",".join(ABILITIES.names()))
    parser.add_argument("--limit", type=int, default=None, help="items per ability")
    args = parser.parse_args()
    session = EditgateSession(Settings(
        model=args.model, data_dir=resolve_data_dir(None), profile=get_profile(args.profile),
        eval_dtype=args.eval_dtype, limit=args.limit))
    names = args.abilities.split(",")
    for name in names:  # the KL canary's baseline distributions, before anything is timed
        if name == "kl_drift":
            session.baseline(name)
    now, _ = memory()
    print(f"{args.model}, {args.profile}, {args.eval_dtype}: model loaded, {now:.2f} GiB resident")
    print("| ability | items | s | peak GiB |\n|---|---|---|---|")
    for name in names:
        run = session.ability_run(name)
        reset_peak()
        start = time.perf_counter()
        evaluate(run, session.runner, state="profile")
        seconds = time.perf_counter() - start
        print(f"| {name} | {len(run.items)} | {seconds:.1f} | {memory()[1]:.2f} |", flush=True)


if __name__ == "__main__":
    main()
