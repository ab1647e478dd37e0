"""The findings of arXiv 2401.04700, checked on a run of the gate suite.

Run the matrix of the paper's claims, then tabulate it (per model):

    pytest ability_tests --editors kn,rome,memit,alphaedit,rome+rect,memit+rect \\
        --regimes single,sequential-20,batch-10,batch-100 --checkpoints 1,10,20 \\
        -k "not (kn and sequential) and not memit-sequential and not memit+rect-sequential" \\
        --report-dir reports/findings-smollm2
    python benchmarks/paper_findings.py reports/findings-smollm2/latest.json

Several runs of one model (an editor re-run after a fix, a case added later) make one table with
``--merge``; a later run's case replaces an earlier run's case of the same id.

For every edit case the table gives, per ability, the change of its headline metric (the paper
metric when the profile scores it, else the continuous one; points for fractions, nats otherwise),
marked ✗ where a gate of that ability failed. Below it, each claim of the paper is checked against
this model: (1) KN collapses after one edit, (2) ROME degrades with sequential edits, (3) MEMIT
degrades with batch size, (4) AlphaEdit and RECT hold up longer than the methods they fix. A claim
that does not hold on this model is reported as such: that is a finding, not a failure.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

CASE = re.compile(r"^(?P<editor>.+?)-(?P<regime>single|sequential-\d+|batch-\d+(?:-sequential-\d+)?)"
                  r"(?:@(?P<k>\d+))?$")


def headline_metrics(run: dict[str, Any]) -> dict[str, str]:
    """ability → the metric whose change the table shows."""
    scored = {(g["ability"], g["metric"]) for g in run["gates"]}
    answer = {}
    for name, info in run["environment"]["abilities"].items():
        metrics = [m for m in info["metrics"] if (name, m["name"]) in scored]
        if metrics:
            answer[name] = next((m for m in metrics if m["kind"] == "paper"), metrics[0])["name"]
    return answer


def edits_of(case: str) -> tuple[str, str, int]:
    """(editor, regime family, number of edits) of a case id such as ``rome-sequential-20@10``."""
    match = CASE.match(case)
    if not match:
        return case, "?", 0
    regime, k = match["regime"], match["k"]
    if regime == "single":
        return match["editor"], "single", 1
    if regime.startswith("batch") and "sequential" not in regime:
        return match["editor"], "batch", int(regime.split("-")[1])
    return match["editor"], "sequential", int(k) if k else int(regime.rsplit("-", 1)[1])


def collect(run: dict[str, Any]) -> tuple[dict[str, dict[str, tuple[float, bool]]], dict[str, int]]:
    heads = headline_metrics(run)
    table: dict[str, dict[str, tuple[float, bool]]] = defaultdict(dict)
    failed: dict[str, int] = defaultdict(int)
    for gate in run["gates"]:
        case, ability = gate["case"], gate["ability"]
        failed[case] += not gate["passed"]
        if gate["metric"] == heads.get(ability):
            previous = table[case].get(ability, (0.0, True))
            table[case][ability] = (gate["delta"], previous[1] and gate["passed"])
        elif not gate["passed"] and ability in table[case]:
            table[case][ability] = (table[case][ability][0], False)
        elif not gate["passed"]:
            table[case][ability] = (float("nan"), False)
    return table, failed


def render(run: dict[str, Any]) -> str:
    heads = headline_metrics(run)
    units = {name: next(m["unit"] for m in info["metrics"] if m["name"] == heads[name])
             for name, info in run["environment"]["abilities"].items() if name in heads}
    table, failed = collect(run)
    abilities = sorted(heads)
    cases = sorted(table, key=lambda c: (edits_of(c)[0], edits_of(c)[1], edits_of(c)[2]))
    gates_per_case = {c: sum(1 for g in run["gates"] if g["case"] == c) for c in cases}

    def cell(delta: float, passed: bool, unit: str) -> str:
        value = f"{100 * delta:+.0f}" if unit == "" else f"{delta:+.2f}"
        return value + ("" if passed else " ✗")

    env = run["environment"]
    items = "" if env.get("limit") is None else f", {env['limit']} items"
    lines = [f"**{env['model']}**, profile `{env['profile']}`{items}"
             " — Δ of the headline metric (points; nats for log-probs), ✗ = a gate failed", "",
             "Headline metrics: " + ", ".join(f"{a} `{heads[a]}`" for a in abilities) + ".", "",
             "| case | edits | failed gates | " + " | ".join(abilities) + " |",
             "|---|---|---|" + "---|" * len(abilities)]
    for case in cases:
        cells = [cell(*table[case][a], units[a]) if a in table[case] else "" for a in abilities]
        lines.append(f"| {case} | {edits_of(case)[2]} | {failed[case]}/{gates_per_case[case]} | "
                     + " | ".join(cells) + " |")
    lines += ["", *claims(cases, failed, gates_per_case)]
    return "\n".join(lines) + "\n"


def _curve(cases: list[str], failed: dict[str, int], editor: str, family: str) -> list[tuple[int, int]]:
    points = {edits_of(c)[2]: failed[c] for c in cases
              if edits_of(c)[0] == editor and edits_of(c)[1] in (family, "single")}
    return sorted(points.items())


def claims(cases: list[str], failed: dict[str, int], totals: dict[str, int]) -> list[str]:
    """One line per claim: the failed-gate curve and whether its direction matches the paper."""
    def curve_text(points: list[tuple[int, int]]) -> str:
        return ", ".join(f"{n} edits: {f} failed" for n, f in points) or "not run"

    def grows(points: list[tuple[int, int]]) -> bool | None:
        return None if len(points) < 2 else points[-1][1] > points[0][1]

    def verdict(matches: bool | None) -> str:
        return {None: "not measured (needs two sizes)", True: "matches the paper",
                False: "does not match the paper"}[matches]

    lines = []
    kn = _curve(cases, failed, "kn", "single")
    kn_total = next((totals[c] for c in cases if edits_of(c)[0] == "kn"), 0)
    if kn:
        share = kn[0][1] / max(kn_total, 1)
        lines.append(f"1. KN collapses after one edit: {kn[0][1]}/{kn_total} gates failed — "
                     f"{'matches' if share >= 0.5 else 'partly matches' if share > 0 else 'does not match'} "
                     "the paper.")
    rome = _curve(cases, failed, "rome", "sequential")
    lines.append(f"2. ROME degrades with sequential edits ({curve_text(rome)}) — {verdict(grows(rome))}.")
    memit = _curve(cases, failed, "memit", "batch")
    lines.append(f"3. MEMIT degrades with batch size ({curve_text(memit)}) — {verdict(grows(memit))}.")
    for fix, base, family in (("alphaedit", "memit", "batch"), ("alphaedit", "rome", "sequential"),
                              ("rome+rect", "rome", "sequential"), ("memit+rect", "memit", "batch"),
                              ("r-rome", "rome", "sequential")):
        fixed, plain = _curve(cases, failed, fix, family), _curve(cases, failed, base, family)
        common = sorted(set(dict(fixed)) & set(dict(plain)))
        if not common:
            continue
        better = sum(dict(fixed)[n] for n in common) <= sum(dict(plain)[n] for n in common)
        lines.append(f"4. {fix} vs {base}, {family} ({curve_text(fixed)} vs {curve_text(plain)}) — "
                     f"{'holds up at least as well: matches' if better else 'fails more: does not match'}"
                     " the paper.")
    return lines


def merge(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One table from several runs of the same model and profile; a later run's case replaces an
    earlier run's case of the same id (e.g. an editor re-run after a fix)."""
    first = runs[0]["environment"]
    for run in runs[1:]:
        env = run["environment"]
        if (env["model"], env["profile"]) != (first["model"], first["profile"]):
            raise SystemExit(f"cannot merge {env['model']}/{env['profile']} into "
                             f"{first['model']}/{first['profile']}")
    gates: list[dict[str, Any]] = []
    for run in runs:
        replaced = {gate["case"] for gate in run["gates"]}
        gates = [g for g in gates if g["case"] not in replaced] + run["gates"]
    return {**runs[0], "gates": gates}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run JSON files (reports/.../latest.json)")
    parser.add_argument("--merge", action="store_true",
                        help="one table from all runs (same model); later runs replace cases")
    args = parser.parse_args()
    runs = [json.loads(path.read_text()) for path in args.runs]
    for run in [merge(runs)] if args.merge else runs:
        print(render(run))


if __name__ == "__main__":
    main()
