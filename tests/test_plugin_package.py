"""The README's plugin examples work as written: installed as a package, they join the suite.

The ability ("Writing an ability") and the editor ("Writing your own editor") are taken from the
README's code blocks verbatim, written into a throwaway package with a ``.dist-info`` whose entry
points are the README's ``pyproject.toml`` blocks — what ``pip install`` would leave — and put on
``PYTHONPATH`` of child runs, so this process's registries never see them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def readme_block(first_line: str, lang: str) -> str:
    """The README's fenced ``lang`` block that opens with ``first_line`` (exactly one)."""
    (block,) = re.findall(rf"```{lang}\n({re.escape(first_line)}\n.*?)```", README, re.S)
    return block


def readme_entry_points() -> str:
    """entry_points.txt from every ``# your pyproject.toml`` block of the README."""
    groups: dict[str, dict[str, str]] = {}
    for block in re.findall(r"```toml\n(# your pyproject.toml\n.*?)```", README, re.S):
        for group, entries in tomllib.loads(block)["project"]["entry-points"].items():
            groups.setdefault(group, {}).update(entries)
    return "".join(f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in entries.items()) + "\n"
                   for group, entries in groups.items())


@pytest.fixture(scope="module")
def plugin(tmp_path_factory, data_dir):
    """(run, the golden folder): ``run(*args)`` runs the gate suite with the package installed."""
    work = tmp_path_factory.mktemp("plugin")
    package = work / "site" / "mypackage"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "polarity.py").write_text(readme_block("# mypackage/polarity.py", "python"))
    (package / "half_rome.py").write_text(readme_block("# mypackage/half_rome.py", "python"))
    dist = work / "site" / "mypackage-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mypackage\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(readme_entry_points())
    project = work / "project"
    shutil.copytree(ROOT / "ability_tests", project / "ability_tests")
    (project / "conftest.py").write_text(
        'pytest_plugins = ["editgate.plugin", "editgate.fixtures", "editgate.report.plugin"]\n')
    (project / "pytest.ini").write_text(f"[pytest]\neditgate_data_dir = {data_dir}\n")
    goldens = work / "my_tests" / "baselines"

    def run(*args: str, installed: bool = True) -> subprocess.CompletedProcess:
        env = {**os.environ, "EDITGATE_CACHE_DIR": str(work / "cache")}
        if installed:
            env["PYTHONPATH"] = os.pathsep.join([str(work / "site"), env.get("PYTHONPATH", "")])
        return subprocess.run([sys.executable, "-m", "pytest", "ability_tests", "-p",
                               "no:cacheprovider", "--model", "tiny-llama", "--no-report", *args],
                              cwd=project, env=env, capture_output=True, text=True, check=False)

    return run, goldens


def test_readme_examples_are_complete_files():
    assert "class Polarity(Ability)" in readme_block("# mypackage/polarity.py", "python")
    assert 'polarity = "mypackage.polarity:Polarity"' in README
    assert "[editgate.abilities]\npolarity = mypackage.polarity:Polarity" in readme_entry_points()
    assert "half-rome = mypackage.half_rome:HalfROME" in readme_entry_points()


def test_plugin_ability_golden_then_gate_with_the_plugin_editor(plugin):
    run, goldens = plugin
    update = run("--abilities", "polarity", "--baselines-dir", str(goldens), "--update-baselines",
                 "-k", "test_baseline", "-q")
    assert update.returncode == 0, update.stdout[-3000:]
    golden = json.loads((goldens / "tiny-llama" / "quick-float32.json").read_text())
    assert list(golden["abilities"]) == ["polarity"]
    assert golden["abilities"]["polarity"]["items"] == 50

    gate = run("--abilities", "polarity", "--baselines-dir", str(goldens),
               "--editors", "half-rome", "--regimes", "single",
               "-k", "test_baseline or test_ability", "-q", "-rA")
    assert "PASSED ability_tests/test_baseline.py::test_baseline[polarity]" in gate.stdout, \
        gate.stdout[-3000:]
    for metric in ("accuracy", "margin"):  # the gates ran: decided, not errored
        assert re.search(rf"(PASSED|FAILED) .*test_ability\[half-rome-single-polarity-{metric}\]",
                         gate.stdout), gate.stdout[-3000:]
    assert "ERROR" not in gate.stdout


def test_the_built_in_suite_is_unchanged_beside_the_plugin(plugin):
    run, _ = plugin
    ids = lambda result: {line for line in result.stdout.splitlines() if "::" in line}
    alone = run("--co", "-q", installed=False)
    beside = run("--co", "-q")
    assert alone.returncode == beside.returncode == 0, beside.stdout[-3000:]
    assert ids(alone) < ids(beside)  # every built-in test is still there; the plugin's join them
    added = ids(beside) - ids(alone)
    assert added and all("polarity" in i or "half-rome" in i for i in added)
