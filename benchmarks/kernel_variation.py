"""How much do scores move when only the CPU kernels change? Per ability, per precision.

    python benchmarks/kernel_variation.py [--profile quick] [--configs native,avx512-core,avx2]

Scores every ability of the profile on the unedited model once per (kernel configuration,
precision), each in a fresh subprocess whose environment selects the kernels a different machine
would run:

* ``native``       — this machine as it is;
* ``avx512-core``  — oneDNN limited to AVX-512 without bf16 instructions (Skylake-SP, Cascade Lake);
* ``avx2``         — ATen and oneDNN limited to AVX2 (Haswell to Zen 3);
* ``no-simd``      — ATen's scalar kernels (a stress case: every vectorised reduction differs);
* ``one-thread``   — this machine on one thread (work split differently between threads).

and prints, per ability and precision, against ``native`` in the same precision: the items whose
prediction changed, the largest per-item change of each metric, and the change of each metric's
mean. This is the evidence behind the golden baselines' design (README, "Reproducibility").
Nothing is read from or written to the results cache: every score is computed in its subprocess.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGS: dict[str, dict[str, str]] = {
    "native": {},
    "avx512-core": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
             "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "no-simd": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "one-thread": {"OMP_NUM_THREADS": "1"},
}


def worker(profile: str, dtype: str, abilities: list[str], out: Path) -> None:
    """Score every ability in this process's kernels; write per-item results to ``out``."""
    from editgate.data import resolve_data_dir
    from editgate.evaluate import evaluate, prepare
    from editgate.fingerprint import compute_environment
    from editgate.models import load_model
    from editgate.profiles import get_profile
    from editgate.runner import AbilityRunner

    lm = load_model()
    runner = AbilityRunner(lm, eval_dtype=dtype)
    results, seconds = {}, {}
    for name in abilities:
        run = prepare(name, resolve_data_dir(None), lm.name, get_profile(profile))
        start = time.perf_counter()
        results[name] = [r.to_json() for r in evaluate(run, runner)]
        seconds[name] = time.perf_counter() - start
    out.write_text(json.dumps({"environment": compute_environment(lm.device),
                               "attention": runner.attention_fallback,
                               "seconds": seconds, "results": results}))


def compare(reference: dict, other: dict) -> dict[str, dict]:
    """Per ability: changed predictions, and per metric the largest item change and mean change."""
    table = {}
    for name, ref_items in reference["results"].items():
        items = other["results"][name]
        flips = [a["id"] for a, b in zip(ref_items, items) if a["prediction"] != b["prediction"]]
        metrics = {}
        for metric in ref_items[0]["metrics"]:
            diffs = [b["metrics"][metric] - a["metrics"][metric] for a, b in zip(ref_items, items)]
            metrics[metric] = {"max_item": max(abs(d) for d in diffs),
                               "mean": sum(diffs) / len(diffs)}
        table[name] = {"items": len(items), "flips": flips, "metrics": metrics}
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--configs", default="native,avx512-core,avx2,no-simd")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--abilities", help="comma-separated (default: all registered)")
    parser.add_argument("--out", type=Path, help="folder for the raw per-item results (JSON)")
    parser.add_argument("--worker", nargs=2, metavar=("DTYPE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    from editgate.registry import ABILITIES

    abilities = args.abilities.split(",") if args.abilities else ABILITIES.names()
    if args.worker:
        worker(args.profile, args.worker[0], abilities, Path(args.worker[1]))
        return
    out = args.out or Path(tempfile.mkdtemp(prefix="kernel-variation-"))
    out.mkdir(parents=True, exist_ok=True)
    configs, dtypes = args.configs.split(","), args.dtypes.split(",")
    runs: dict[tuple[str, str], dict] = {}
    for dtype in dtypes:
        for config in configs:
            path = out / f"{config}-{dtype}.json"
            if not path.exists():
                start = time.perf_counter()
                subprocess.run([sys.executable, __file__, "--profile", args.profile,
                                "--abilities", ",".join(abilities), "--worker", dtype, str(path)],
                               env={**os.environ, **CONFIGS[config]}, check=True)
                print(f"scored {config} {dtype} in {time.perf_counter() - start:.0f} s",
                      file=sys.stderr)
            runs[config, dtype] = json.loads(path.read_text())
    print("| precision | kernels | capability | ability | items flipped | largest item change "
          "(per metric) | mean change (per metric) | s |\n|---|---|---|---|---|---|---|---|")
    for dtype in dtypes:
        reference = runs["native", dtype]
        for config in configs:
            if config == "native":
                continue
            env = runs[config, dtype]["environment"]
            for name, row in compare(reference, runs[config, dtype]).items():
                largest = ", ".join(f"{m} {v['max_item']:.2g}" for m, v in row["metrics"].items())
                means = ", ".join(f"{m} {v['mean']:+.2g}" for m, v in row["metrics"].items())
                print(f"| {dtype} | {config} | {env['cpu_capability']} | {name} | "
                      f"{len(row['flips'])}/{row['items']} | {largest} | {means} | "
                      f"{runs[config, dtype]['seconds'][name]:.1f} |")
    print(f"\nraw results: {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
