"""How much do MEMIT's and AlphaEdit's edits depend on the covariance budget?

ROME whitens with C⁻¹ (off in the LLaMA configs SmolLM2 inherits), MEMIT weighs its least
squares by λC and AlphaEdit projects onto C's null space, C = E[k kᵀ] over a generic corpus
(editgate.stats). The references stream 100k Wikipedia texts; editgate has the ~3 MB shared
corpus (~700k SmolLM2 tokens). This script computes C on MEMIT's layers from 100k, 300k and
every token of the corpus and reports, each budget against the whole corpus:

* C itself: relative Frobenius change, and the change between the two halves of the budget
  (the sampling noise at half that budget);
* MEMIT's ΔW per layer for the first three CounterFact requests as one batch (the same z
  targets, shared through the weights-keyed target cache): relative Frobenius change, cosine;
* AlphaEdit's projector P (null space of C, the shipped threshold): its rank, and the share of
  the *whole-corpus* key energy it lets through, tr(P C_all) / tr(C_all) — what an edit in that
  "null space" would still disturb; and AlphaEdit's ΔW change.

    python benchmarks/covariance_sensitivity.py [--model smollm2-135m] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from editgate.data import resolve_data_dir
from editgate.editors.alphaedit import null_space_projection
from editgate.editors.base import EditContext
from editgate.edits import load_edit_requests
from editgate.models import load_model
from editgate.registry import EDITORS
from editgate.stats import second_moments

BUDGETS = (100_000, 300_000)
ALL = 10**8  # more than the corpus holds: every window of it


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    return float(a @ b / (a.norm() * b.norm()))


def deltas(lm, data_dir, name: str, requests, tokens: int) -> dict[str, torch.Tensor]:
    editor = EDITORS.get(name)()
    hp = editor.hparams(lm, {"mom2_tokens": tokens})
    delta = editor.edit(EditContext(lm, data_dir, weights_key="base"), requests, hp)
    return {param: delta.dense(param) for param in sorted(delta.updates)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--json")
    args = parser.parse_args()
    lm, data_dir = load_model(args.model), resolve_data_dir(None)
    requests, _ = load_edit_requests("counterfact", data_dir, 3)
    alpha_hp = EDITORS.get("alphaedit")().hparams(lm, {})
    layers = list(alpha_hp.layers)

    start = time.perf_counter()
    moments = {n: second_moments(lm, layers, data_dir, n_tokens=n) for n in (*BUDGETS, ALL)}
    halves = {n: (second_moments(lm, layers, data_dir, n_tokens=n // 2),) for n in BUDGETS}
    stats_seconds = time.perf_counter() - start
    result: dict = {"model": args.model, "layers": layers, "stats_seconds": round(stats_seconds),
                    "budgets": {}}
    reference_deltas = {name: deltas(lm, data_dir, name, requests, ALL)
                        for name in ("memit", "alphaedit")}
    full = moments[ALL]
    for n in (*BUDGETS, ALL):
        row: dict = {"layers": {}}
        edit = {name: deltas(lm, data_dir, name, requests, n) for name in ("memit", "alphaedit")}
        for layer in layers:
            projection = null_space_projection(moments[n][layer], alpha_hp.nullspace_threshold,
                                               relative=alpha_hp.nullspace_relative).double()
            energy = float(torch.trace(projection @ full[layer].double())
                           / torch.trace(full[layer].double()))
            entry = {"C_rel_change": round(relative(moments[n][layer], full[layer]), 4),
                     "null_dim": round(float(torch.trace(projection))),
                     "null_energy_of_C_all": round(energy, 4)}
            if n in halves:  # the first half against the whole budget: sampling noise
                entry["C_half_vs_budget"] = round(relative(halves[n][0][layer], moments[n][layer]), 4)
            result.setdefault("trace_C_all", {})[layer] = round(float(torch.trace(full[layer])), 2)
            row["layers"][layer] = entry
        for name in ("memit", "alphaedit"):
            ref = reference_deltas[name]
            row[name] = {
                param.split(".")[2]: {"rel_change": round(relative(edit[name][param], ref[param]), 4),
                                      "cosine": round(cosine(edit[name][param], ref[param]), 5)}
                for param in ref}
        result["budgets"]["all" if n == ALL else n] = row
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=1)


if __name__ == "__main__":
    main()
