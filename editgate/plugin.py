"""The pytest plugin: options, the editor × regime × ability matrix, and the end-of-run summary.

Enabled by the project's root ``conftest.py`` (``pytest_plugins``) or ``-p editgate.plugin``.
Test modules under ``ability_tests/`` ask for the fixtures in :mod:`editgate.fixtures`;
this module decides which parameters they get:

* ``edited`` — one :class:`~editgate.regimes.EditCase` per (editor, regime, checkpoint);
* ``ability_metric`` — one (ability, metric) pair per gated metric;
* ``success_metric`` — efficacy / paraphrase / neighborhood;
* ``baseline_ability`` — one ability (for the golden-baseline regression tests).

Test ids read ``rome-single-sentiment-accuracy``, so ``-k rome``, ``-k single`` or
``-k sentiment`` select naturally.
"""

from __future__ import annotations

import io
import os
from collections import defaultdict
from pathlib import Path

import pytest

from editgate.errors import EditgateError
from editgate.gate import GateResult, Tolerances
from editgate.regimes import EditCase, Regime

DEFAULT_EDITORS = ("rome",)
DEFAULT_REGIMES = {"quick": ("single",), "standard": ("single",), "paper": ("single",)}
CONTROL_EDITORS: set[str] = set()  # registered, but run only when named in --editors


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("editgate", "editgate: general-ability gates for edited models")
    group.addoption("--model", help="registered name, local directory or hub id "
                    "(default: ini editgate_model or smollm2-135m)")
    group.addoption("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    group.addoption("--dtype", default="float32", help="float32 | bfloat16 | float16")
    group.addoption("--data-dir", help="task data folder (default: ini editgate_data_dir, "
                    "$EDITGATE_DATA_DIR, ../shared/data)")
    group.addoption("--profile", default=None, help="quick | standard | paper (default quick)")
    group.addoption("--limit", type=int, help="items per ability (overrides the profile)")
    group.addoption("--editors", help="comma-separated editor names (default: all non-control)")
    group.addoption("--regimes", help="comma-separated regimes, e.g. single,sequential-10,batch-10")
    group.addoption("--abilities", help="comma-separated abilities (default: all registered)")
    group.addoption("--checkpoints", help="edit counts to evaluate sequential regimes at, "
                    "e.g. 1,5,10")
    group.addoption("--edit-source", default="counterfact", help="counterfact | zsre")
    group.addoption("--tolerance", action="append", default=[], metavar="ABILITY.METRIC=X",
                    help="override one tolerance (repeatable)")
    group.addoption("--tolerances-file", help="TOML file of tolerances "
                    "(default: ability_tests/tolerances.toml)")
    group.addoption("--hparam", action="append", default=[], metavar="EDITOR.KEY=VALUE",
                    help="override one editor hyper-parameter (repeatable)")
    group.addoption("--update-baselines", action="store_true",
                    help="rewrite the golden baseline files instead of checking them")
    group.addoption("--seed", type=int, default=0)
    parser.addini("editgate_model", "default model", default="smollm2-135m")
    parser.addini("editgate_data_dir", "task data folder (relative to rootdir)",
                  default="../shared/data")
    parser.addini("editgate_profile", "default profile", default="quick")
    parser.addini("editgate_suite_dir", "folder name of gate suites (options are checked "
                  "before collection when a run includes it)", default="ability_tests")


def _split(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def _parse_hparams(values: list[str]) -> dict[str, dict[str, object]]:
    import ast

    from editgate.errors import ConfigError

    parsed: dict[str, dict[str, object]] = defaultdict(dict)
    for text in values:
        key, sep, raw = text.partition("=")
        editor, dot, name = key.partition(".")
        if not sep or not dot:
            raise ConfigError(f"--hparam {text!r}: expected EDITOR.KEY=VALUE")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        parsed[editor.strip()][name.strip()] = value
    return dict(parsed)


class EditgatePlugin:
    """Per-run state: settings, the session (lazy), the matrix, and collected gate outcomes."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self._ready = False
        self._session = None
        self.gates: dict[tuple[str, str, str], GateResult] = {}
        self.success: dict[tuple[str, str], tuple[float, float, bool]] = {}
        self.edit_errors: dict[str, str] = {}
        self.edit_seconds: dict[str, float] = {}
        self.collected_abilities: list[str] = []

    def setup(self) -> None:
        """Resolve options on first use, so runs without gate tests never need data or models."""
        if self._ready:
            return
        try:
            self._setup()
        except EditgateError as exc:
            pytest.exit(f"editgate: {exc}", returncode=pytest.ExitCode.USAGE_ERROR)
        self._ready = True

    def validate_names(self) -> None:
        """Cheap checks of names and syntax at start-up (no data, no model): fail fast and clean."""
        from editgate.evaluate import get_profile
        from editgate.registry import ABILITIES, EDITORS

        opt = self.config.getoption
        get_profile(opt("--profile") or self.config.getini("editgate_profile"))
        for name in _split(opt("--editors")):
            EDITORS.get(name)
        for name in _split(opt("--abilities")):
            ABILITIES.get(name)
        for name in _split(opt("--regimes")):
            Regime.parse(name)
        _parse_hparams(opt("--hparam"))
        Tolerances.parse_overrides(opt("--tolerance"))

    def _setup(self) -> None:
        from editgate.data import resolve_data_dir
        from editgate.evaluate import get_profile
        from editgate.registry import ABILITIES, EDITORS
        from editgate.session import Settings

        config = self.config
        opt = config.getoption
        profile = get_profile(opt("--profile") or config.getini("editgate_profile"))
        data_dir = resolve_data_dir(opt("--data-dir") or config.getini("editgate_data_dir"),
                                    base=Path(config.rootpath))
        self.settings = Settings(
            model=opt("--model") or config.getini("editgate_model"), data_dir=data_dir,
            profile=profile, device=opt("--device"), dtype=opt("--dtype"), limit=opt("--limit"),
            edit_source=opt("--edit-source"), seed=opt("--seed"),
            hparam_overrides=_parse_hparams(opt("--hparam")),
        )
        known_editors = EDITORS.names()
        self.editors = _split(opt("--editors")) or [
            e for e in known_editors if e not in CONTROL_EDITORS]
        for name in self.editors:
            EDITORS.get(name)  # unknown names fail now, with the list of known ones
        self.abilities = _split(opt("--abilities")) or ABILITIES.names()
        for name in self.abilities:
            ABILITIES.get(name)
        regimes = _split(opt("--regimes")) or list(DEFAULT_REGIMES[profile.name])
        self.regimes = [Regime.parse(r) for r in regimes]
        checkpoints = _split(opt("--checkpoints"))
        try:
            self.checkpoints = tuple(int(c) for c in checkpoints) or None
        except ValueError:
            from editgate.errors import ConfigError

            raise ConfigError(f"--checkpoints {opt('--checkpoints')!r}: expected integers") from None
        suite = Path(config.rootpath) / config.getini("editgate_suite_dir")
        tolerance_file = opt("--tolerances-file") or suite / "tolerances.toml"
        self.tolerances = Tolerances.load(Path(tolerance_file), opt("--tolerance"))
        self.update_baselines = bool(opt("--update-baselines"))

    # ---------------------------------------------------------------- session

    @property
    def session(self):
        self.setup()
        if self._session is None:
            from editgate.console import ProgressBars
            from editgate.session import EditgateSession

            capman = self.config.pluginmanager.getplugin("capturemanager")
            suspend = capman.global_and_fixture_disabled if capman else None
            on_worker = hasattr(self.config, "workerinput")
            self._session = EditgateSession(self.settings,
                                            ProgressBars(suspend, enabled=not on_worker))
        return self._session

    def cases(self) -> list[EditCase]:
        from editgate.registry import EDITORS

        cases = []
        for editor in self.editors:
            editor_cls = EDITORS.get(editor)
            for regime in self.regimes:
                for checkpoint in regime.checkpoints(self.checkpoints):
                    cases.append(EditCase(editor, regime, checkpoint))
            del editor_cls
        return cases

    def gated_metrics(self) -> list[tuple[str, str]]:
        pairs = []
        for name in self.abilities:
            run = self.session.ability_run(name)
            pairs.extend((name, m.name) for m in run.ability.active_metrics(run.generation))
        return pairs

    # ---------------------------------------------------------------- outcomes

    def record_edit(self, state) -> None:
        self.edit_seconds[state.case.id] = state.edit_seconds
        if state.error is not None:
            self.edit_errors[state.case.id] = state.error

    def record_gate(self, case: EditCase, result: GateResult) -> None:
        self.gates[(case.id, result.ability, result.metric)] = result

    def record_success(self, case: EditCase, metric: str, rate: float, threshold: float) -> None:
        self.success[(case.id, metric)] = (rate, threshold, rate >= threshold)

    # ---------------------------------------------------------------- pytest hooks

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        from editgate.edit_success import SUCCESS_METRICS

        names = metafunc.fixturenames
        if {"edited", "ability_metric", "success_metric", "baseline_ability"} & set(names):
            self.setup()
        if "edited" in names:
            cases = self.cases()
            metafunc.parametrize("edited", cases, ids=[c.id for c in cases], indirect=True,
                                 scope="session")
        if "ability_metric" in names:
            pairs = self.gated_metrics()
            metafunc.parametrize("ability_metric", pairs, ids=[f"{a}-{m}" for a, m in pairs])
        if "success_metric" in names:
            metafunc.parametrize("success_metric", SUCCESS_METRICS)
        if "baseline_ability" in names:
            metafunc.parametrize("baseline_ability", self.abilities)

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        abilities: set[str] = set()
        for item in items:
            params = getattr(item, "callspec", None)
            if params is None:
                continue
            if "ability_metric" in params.params:
                abilities.add(params.params["ability_metric"][0])
            if "baseline_ability" in params.params:
                abilities.add(params.params["baseline_ability"])
            case = params.params.get("edited")
            if isinstance(case, EditCase):
                # `--dist loadgroup` keeps one edit chain on one worker.
                item.add_marker(pytest.mark.xdist_group(case.group))
        self.collected_abilities = sorted(abilities)

    def pytest_terminal_summary(self, terminalreporter, exitstatus: int) -> None:
        if not (self.gates or self.success or self.edit_errors):
            return
        from editgate.summary import render_summary

        width = terminalreporter._tw.fullwidth
        buffer = io.StringIO()
        render_summary(self, buffer, width=width, color=terminalreporter.hasmarkup)
        terminalreporter.write(buffer.getvalue())


PLUGIN_NAME = "editgate-plugin"


def pytest_configure(config: pytest.Config) -> None:
    if config.pluginmanager.has_plugin(PLUGIN_NAME) or config.option.help:
        return
    plugin = EditgatePlugin(config)
    try:
        plugin.validate_names()
        if _runs_gate_tests(config):
            plugin._setup()  # fail before collection, with one clear line
            plugin._ready = True
    except EditgateError as exc:
        raise pytest.UsageError(str(exc)) from None
    config.pluginmanager.register(plugin, PLUGIN_NAME)
    config.stash[PLUGIN_KEY] = plugin
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


PLUGIN_KEY = pytest.StashKey["EditgatePlugin"]()


def _runs_gate_tests(config: pytest.Config) -> bool:
    """Whether the run's paths include a gate suite folder (``ability_tests`` by default)."""
    names = {config.getini("editgate_suite_dir")}
    return any(names & set(Path(str(arg).split("::")[0]).parts) for arg in config.args)


def get_plugin(config: pytest.Config) -> EditgatePlugin:
    return config.stash[PLUGIN_KEY]
