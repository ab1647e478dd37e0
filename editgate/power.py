r"""Detection power of the gate: which drop does each ability's gate catch, at how many items?

    editgate power                          # SmolLM2, the default grid; writes reports/power.{json,md}
    editgate power --model gemma3-270m --scales 0.1,0.2 --sizes 25,50

Damage of controlled size is injected into the real model: Gaussian noise on every MLP output
projection,

    W_l ← W_l + s · std(W_l) · Z_l,     Z_l ~ N(0, I) drawn from a generator seeded by (seed, s, l),

for a grid of relative scales s (s = 0 is the unedited model, i.e. the ``noop`` control). Each
damaged model scores a pool of items once (per-item results cached like any other run). Trials
then draw n items with replacement from the pool and run exactly the suite's paired gate
(:func:`editgate.gate.paired_gate` semantics: fail iff Δ < −tolerance and the bootstrap CI lies
below 0) on every metric — the paper metric and the continuous one see the *same* damaged items,
so their power is directly comparable. A gate "detects" a damage level when it fails in at least
``reliable`` (80 %) of the trials.

Damage is reported on one axis per ability: the pool-level drop of its headline metric (the paper
metric when the profile scores it, else the continuous one), so the rows of one ability compare
gating on the paper metric against gating on the continuous metric for the same damage.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from editgate.abilities.base import AbilityRun, ItemResult
from editgate.cache import atomic_write_text, cache_key
from editgate.data import resolve_data_dir
from editgate.delta import WeightDelta
from editgate.evaluate import cached_evaluate, prepare
from editgate.fingerprint import code_fingerprint
from editgate.gate import Tolerances, bootstrap_ci, is_corpus_statistic
from editgate.models import DTYPES, LoadedModel, load_model
from editgate.profiles import get_profile
from editgate.registry import ABILITIES
from editgate.runner import DEFAULT_EVAL_DTYPE, AbilityRunner

DEFAULT_SCALES = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3)
DEFAULT_SIZES = (25, 50, 100, 200)
TRIAL_BOOTSTRAP_SAMPLES = 1000  # per trial; the suite uses 2000 — the decision rarely differs


def noise_delta(lm: LoadedModel, scale: float, seed: int = 0) -> WeightDelta:
    """Relative Gaussian noise ``scale · std(W) · Z`` on every MLP output projection."""
    updates: dict[str, torch.Tensor] = {}
    if scale == 0:
        return WeightDelta({}, {"editor": "noise", "scale": "0"})
    params = dict(lm.model.named_parameters())
    for layer in range(lm.num_layers):
        name = lm.layout.weight_name(layer)
        weight = params[name].detach()
        digest = hashlib.sha256(f"{seed}:{scale}:{layer}".encode()).digest()
        generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))
        noise = torch.randn(weight.shape, generator=generator, dtype=torch.float32)
        updates[name] = (scale * weight.float().std() * noise).to(weight.dtype)
    return WeightDelta(updates, {"editor": "noise", "scale": str(scale)})


def noise_state_key(lm: LoadedModel, scale: float, seed: int) -> str:
    return "base" if scale == 0 else cache_key(kind="power-noise", model=lm.fingerprint,
                                               scale=scale, seed=seed,
                                               code=code_fingerprint(noise_delta))


def detection_rate(diffs: np.ndarray, size: int, tolerance: float, trials: int,
                   rng: np.random.Generator) -> float:
    """Share of ``trials`` draws of ``size`` items (with replacement) on which the gate fails."""
    failures = 0
    for _ in range(trials):
        sample = diffs[rng.integers(0, diffs.size, size=size)]
        delta = float(sample.mean())
        _, high = bootstrap_ci(sample, samples=TRIAL_BOOTSTRAP_SAMPLES)
        failures += delta < -tolerance and high < 0
    return failures / trials


@dataclass
class PowerRow:
    ability: str
    metric: str
    kind: str  # paper | continuous
    axis_metric: str  # the metric whose pool drop measures the damage
    scale: float
    drop: float  # pool-level drop of axis_metric (baseline − damaged), in its units
    metric_drop: float  # pool-level drop of this metric
    size: int
    tolerance: float
    rate: float  # share of trials the gate failed, configured tolerance
    rate_test_only: float  # share with tolerance 0: the paired test alone


def _values(results: Sequence[ItemResult], metric: str) -> np.ndarray:
    return np.array([r.metrics[metric] for r in results], dtype=np.float64)


def study(lm: LoadedModel, runs: Sequence[AbilityRun], tolerances: Tolerances,
          scales: Sequence[float], sizes: Sequence[int], trials: int, seed: int = 0,
          progress: Callable[[str], None] = lambda message: None,
          eval_dtype: str = "float32") -> list[PowerRow]:
    runner = AbilityRunner(lm, eval_dtype=eval_dtype)
    scored: dict[float, dict[str, list[ItemResult]]] = {}
    for scale in sorted(set(scales) | {0.0}):
        delta = noise_delta(lm, scale, seed)
        state = noise_state_key(lm, scale, seed)
        with delta.applied(lm.model):
            scored[scale] = {}
            for run in runs:
                progress(f"scale {scale:g} · {run.name}")
                scored[scale][run.name] = cached_evaluate(run, runner, state)
    rows: list[PowerRow] = []
    for run in runs:
        metrics = [m for m in run.ability.active_metrics(run.generation)
                   if not is_corpus_statistic(scored[0.0][run.name], m.name)]
        axis = next((m for m in metrics if m.kind == "paper"), metrics[0]).name
        base = {m.name: _values(scored[0.0][run.name], m.name) for m in metrics}
        for scale in sorted(scales):
            damaged = {m.name: _values(scored[scale][run.name], m.name) for m in metrics}
            drop = float(base[axis].mean() - damaged[axis].mean())
            for metric in metrics:
                diffs = damaged[metric.name] - base[metric.name]
                tolerance = tolerances.tolerance(run.name, metric.name)
                for size in sizes:
                    # One generator per cell, seeded by its coordinates: every cell reproducible.
                    cell = f"{seed}:{run.name}:{metric.name}:{scale}:{size}"
                    cell_seed = int.from_bytes(hashlib.sha256(cell.encode()).digest()[:8], "little")
                    rates = [detection_rate(diffs, size, tol, trials, np.random.default_rng(cell_seed))
                             for tol in (tolerance, 0.0)]
                    rows.append(PowerRow(run.name, metric.name, metric.kind, axis, scale, drop,
                                         float(-diffs.mean()), size, tolerance, *rates))
    return rows


def smallest_detected(rows: Sequence[PowerRow], reliable: float = 0.8,
                      test_only: bool = False) -> dict[tuple[str, str, int], float | None]:
    """Per (ability, metric, size): the smallest damage (pool drop of the axis metric) from which
    on the gate fails in ≥ ``reliable`` of trials at every larger damage too; None if never."""
    cells: dict[tuple[str, str, int], list[PowerRow]] = {}
    for row in rows:
        if row.scale > 0:
            cells.setdefault((row.ability, row.metric, row.size), []).append(row)
    answer: dict[tuple[str, str, int], float | None] = {}
    for key, cell in cells.items():
        cell.sort(key=lambda r: r.drop)
        smallest = None
        for row in reversed(cell):
            if (row.rate_test_only if test_only else row.rate) < reliable:
                break
            smallest = row.drop
        answer[key] = smallest
    return answer


def markdown(rows: Sequence[PowerRow], sizes: Sequence[int], model: str, trials: int,
             pool: int, reliable: float = 0.8) -> str:
    """The README table: smallest reliably detected drop per ability, metric and item count."""
    configured = smallest_detected(rows, reliable)
    test_only = smallest_detected(rows, reliable, test_only=True)
    false_alarm = max((r.rate for r in rows if r.scale == 0), default=0.0)
    scales = sorted({r.scale for r in rows if r.scale > 0})

    def fmt(value: float | None, points: bool) -> str:
        if value is None:
            return "—"
        return f"{100 * value:.0f}" if points else f"{value:.2f}"

    lines = [f"Model `{model}`, {pool} items scored per damage scale s = "
             f"{', '.join(f'{s:g}' for s in scales)}; {trials} draws per cell. Damage = pool drop "
             "of the ability's headline metric (accuracy points, or nats for log-prob metrics). "
             f"Cell: the smallest damage caught in ≥ {reliable:.0%} of draws at that damage and "
             "every larger one tried, with the configured tolerance / with the paired test alone; "
             "— : not caught reliably at any damage tried.", "",
             "| ability (headline) | damage at each s | gated on | "
             + " | ".join(f"n={n}" for n in sizes) + " |",
             "|---|---|---|" + "---|" * len(sizes)]
    seen: set[tuple[str, str]] = set()
    for row in rows:
        if (row.ability, row.metric) in seen:
            continue
        seen.add((row.ability, row.metric))
        ability_rows = [r for r in rows if r.ability == row.ability]
        points = next(r for r in ability_rows if r.metric == row.axis_metric).kind == "paper"
        drops = {r.scale: r.drop for r in ability_rows if r.scale > 0}
        damage = " / ".join(fmt(drops[s], points) for s in scales)
        cells = [f"{fmt(configured[(row.ability, row.metric, n)], points)} / "
                 f"{fmt(test_only[(row.ability, row.metric, n)], points)}" for n in sizes]
        lines.append(f"| {row.ability} ({row.axis_metric}) | {damage} | {row.metric} "
                     f"({row.kind}) | " + " | ".join(cells) + " |")
    lines += ["", f"False alarms of `noop` (s = 0, identical weights): {false_alarm:.0%} of draws."]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    from rich.console import Console

    parser = argparse.ArgumentParser(prog="editgate power", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data-dir")
    parser.add_argument("--abilities", help="comma-separated (default: all registered)")
    parser.add_argument("--scales", default=",".join(map(str, DEFAULT_SCALES)))
    parser.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)))
    parser.add_argument("--pool", type=int, default=200, help="items scored per damage level")
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-dtype", default=DEFAULT_EVAL_DTYPE, choices=sorted(DTYPES),
                        help="precision of the scoring forwards, as in the gate")
    parser.add_argument("--out", default="reports/power", help="writes OUT.json and OUT.md")
    parser.add_argument("--render", metavar="JSON", help="only re-render the table of a saved study")
    args = parser.parse_args(argv)
    console = Console(stderr=True)
    if args.render:
        saved = json.loads(Path(args.render).read_text(encoding="utf-8"))
        rows = [PowerRow(**row) for row in saved["rows"]]
        sizes = sorted({row.size for row in rows})
        print(markdown(rows, sizes, saved["model"], saved["trials"], saved["pool"]), end="")
        return 0
    root = Path(__file__).resolve().parent.parent
    scales = [float(s) for s in args.scales.split(",")]
    sizes = [int(s) for s in args.sizes.split(",")]
    if any(s < 0 or not math.isfinite(s) for s in scales) or any(n < 2 for n in sizes):
        parser.error("scales must be finite and ≥ 0, sizes ≥ 2")
    names = args.abilities.split(",") if args.abilities else ABILITIES.names()
    data_dir = resolve_data_dir(args.data_dir)
    profile = get_profile("quick")
    runs = [prepare(name, data_dir, args.model, profile, args.pool) for name in names]
    lm = load_model(args.model)
    tolerances = Tolerances.load(root / "ability_tests" / "tolerances.toml")
    with console.status("scoring damaged models") as status:
        rows = study(lm, runs, tolerances, scales, sizes, args.trials, args.seed,
                     progress=lambda message: status.update(f"scoring · {message}"),
                     eval_dtype=args.eval_dtype)
    table = markdown(rows, sizes, args.model, args.trials, args.pool)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out.with_suffix(".json"), json.dumps(
        {"model": args.model, "eval_dtype": args.eval_dtype, "pool": args.pool,
         "trials": args.trials, "seed": args.seed,
         "rows": [asdict(r) for r in rows]}, indent=1))
    atomic_write_text(out.with_suffix(".md"), table)
    console.print(table, markup=False, highlight=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
