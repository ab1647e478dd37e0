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
from editgate.gate import Tolerances
from editgate.regimes import EditCase, Regime

# The run report is built (and written, unless --no-report) by the report plugin: the one place
# outcome records are collected. The terminal summary below renders that report.
pytest_plugins = ["editgate.report.plugin"]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("editgate", "editgate: general-ability gates for edited models")
    group.addoption("--model", help="registered name, local directory or hub id "
                    "(default: ini editgate_model or smollm2-135m)")
    group.addoption("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    group.addoption("--dtype", default="float32", help="weights (and edits): float32 | bfloat16 | "
                    "float16")
    group.addoption("--eval-dtype", help="precision of the scoring forwards, autocast over "
                    "float32 weights: bfloat16 (default) | float32 | float16")
    group.addoption("--generation-dtype", help="precision of greedy generation's forwards: "
                    "float32 (default; bf16 answers depend on their batch) | bfloat16 | float16")
    group.addoption("--data-dir", help="task data folder (default: ini editgate_data_dir, "
                    "$EDITGATE_DATA_DIR, ../shared/data)")
    group.addoption("--profile", default=None, help="quick | standard | paper (default quick)")
    group.addoption("--limit", type=int, help="items per ability (overrides the profile)")
    group.addoption("--editors", help="comma-separated editor names (default: all non-control)")
    group.addoption("--regimes", help="comma-separated regimes, e.g. single,sequential-10,batch-10")
    group.addoption("--abilities", help="comma-separated abilities (default: all registered)")
    group.addoption("--checkpoints", help="edit counts to evaluate sequential regimes at, "
                    "e.g. 1,5,10")
    group.addoption("--budget-search", action="store_true",
                    help="instead of the checkpoint grid, find each sequential chain's edit "
                    "budget (the most edits at which every gate passes) by doubling and bisection")
    group.addoption("--budget-resolution", type=int, default=None,
                    help="stop bisecting once the budget is bracketed this tightly (default: one "
                    "editor call, the finest a chain allows)")
    group.addoption("--edit-source", default="counterfact", help="counterfact | zsre")
    group.addoption("--edits-file", help="your own edit requests: JSONL in CounterFact's reduced "
                    "format (case_id, prompt, subject, target_new, ground_truth, ...)")
    group.addoption("--tolerance", action="append", default=[], metavar="ABILITY.METRIC=X",
                    help="override one tolerance (repeatable)")
    group.addoption("--tolerances-file", help="TOML file of tolerances "
                    "(default: ability_tests/tolerances.toml)")
    group.addoption("--hparam", action="append", default=[], metavar="EDITOR.KEY=VALUE",
                    help="override one editor hyper-parameter (repeatable)")
    group.addoption("--prompt", action="append", default=[], metavar="ABILITY.KEY=VALUE",
                    help="override one prompt-style setting of an ability, e.g. "
                         "glue_rte.labels=corrected or sentiment.shots=0 (repeatable)")
    group.addoption("--update-baselines", action="store_true",
                    help="rewrite the golden baseline files instead of checking them")
    group.addoption("--baselines-dir", help="folder of golden baseline files (default: ini "
                    "editgate_baselines_dir, else <suite dir>/baselines)")
    group.addoption("--seed", type=int, default=0)
    parser.addini("editgate_model", "default model", default="smollm2-135m")
    parser.addini("editgate_data_dir", "task data folder (relative to rootdir)",
                  default="../shared/data")
    parser.addini("editgate_profile", "default profile", default="quick")
    parser.addini("editgate_baselines_dir", "folder of golden baseline files, relative to "
                  "rootdir (default: <editgate_suite_dir>/baselines)", default="")
    parser.addini("editgate_suite_dir", "folder name of gate suites (options are checked "
                  "before collection when a run includes it)", default="ability_tests")


def worker_device(device: str) -> str:
    """Under pytest-xdist with ``--device auto``, pin worker gwN to GPU N mod #GPUs."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if device != "auto" or not worker.startswith("gw"):
        return device
    import torch

    count = torch.cuda.device_count()
    return f"cuda:{int(worker[2:]) % count}" if count else "cpu"


def _split(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def _parse_assignments(values: list[str], option: str = "--hparam",
                       owner: str = "EDITOR") -> dict[str, dict[str, object]]:
    """``OWNER.KEY=VALUE`` options (--hparam, --prompt) as {owner: {key: value}}; values are
    Python literals, true/false as in TOML, else strings."""
    import ast

    from editgate.errors import ConfigError

    parsed: dict[str, dict[str, object]] = defaultdict(dict)
    for text in values:
        key, sep, raw = text.partition("=")
        editor, dot, name = key.partition(".")
        if not sep or not dot:
            raise ConfigError(f"{option} {text!r}: expected {owner}.KEY=VALUE")
        if raw.strip() in ("true", "false"):  # as written in the hparams TOML files
            value: object = raw.strip() == "true"
        else:
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
        self.collected_abilities: list[str] = []  # gated: scored in the eval precision
        self.golden_abilities: list[str] = []  # golden-checked: scored in float32
        self._ability_keywords: dict[str, tuple[str, ...]] = {}
        # Abilities left out because their data file is missing: ability → the line saying so.
        self.missing_data: dict[str, str] = {}

    def setup(self, *, raising: bool = False) -> None:
        """Resolve options on first use, so runs without gate tests never need data or models.
        A bad option exits pytest with a usage error, or with ``raising`` raises it."""
        if self._ready:
            return
        try:
            self._setup()
        except EditgateError as exc:
            if raising:
                raise
            pytest.exit(f"editgate: {exc}", returncode=pytest.ExitCode.USAGE_ERROR)
        self._ready = True

    @property
    def active_session(self):
        """The model session if this process made one (None on a controller that only
        collected, or before the first gate test), without creating it."""
        return self._session

    def validate_names(self) -> None:
        """Cheap checks of names and syntax at start-up (no data, no model): fail fast and clean."""
        from editgate.profiles import get_profile
        from editgate.registry import ABILITIES, EDITORS

        opt = self.config.getoption
        get_profile(opt("--profile") or self.config.getini("editgate_profile"))
        for name in _split(opt("--editors")):
            EDITORS.get(name)
        for name in _split(opt("--abilities")):
            ABILITIES.get(name)
        for name in _split(opt("--regimes")):
            Regime.parse(name)
        _parse_assignments(opt("--hparam"))
        Tolerances.parse_overrides(opt("--tolerance"))
        _parse_assignments(opt("--prompt"), "--prompt", "ABILITY")

    def _setup(self) -> None:
        from editgate.data import resolve_data_dir
        from editgate.profiles import get_profile
        from editgate.registry import ABILITIES, EDITORS
        from editgate.runner import DEFAULT_EVAL_DTYPE, DEFAULT_GENERATION_DTYPE
        from editgate.session import Settings

        config = self.config
        opt = config.getoption
        profile = get_profile(opt("--profile") or config.getini("editgate_profile"))
        data_dir = resolve_data_dir(opt("--data-dir") or config.getini("editgate_data_dir"),
                                    base=Path(config.rootpath))
        self.settings = Settings(
            model=opt("--model") or config.getini("editgate_model"), data_dir=data_dir,
            profile=profile, device=worker_device(opt("--device")), dtype=opt("--dtype"),
            eval_dtype=opt("--eval-dtype") or DEFAULT_EVAL_DTYPE,
            generation_dtype=opt("--generation-dtype") or DEFAULT_GENERATION_DTYPE,
            limit=opt("--limit"),
            edit_source=opt("--edit-source"), seed=opt("--seed"),
            edits_file=Path(opt("--edits-file")).resolve() if opt("--edits-file") else None,
            hparam_overrides=_parse_assignments(opt("--hparam")),
            prompt_overrides=_parse_assignments(opt("--prompt"), "--prompt", "ABILITY"),
        )
        known_editors = EDITORS.names()
        # Controls (noop, random-rank1) join the matrix only when named in --editors.
        self.editors = _split(opt("--editors")) or [
            e for e in known_editors if not EDITORS.get(e).control]
        for name in self.editors:
            EDITORS.get(name)  # unknown names fail now, with the list of known ones
        self.abilities = _split(opt("--abilities")) or [
            name for name in ABILITIES.names() if profile.includes(ABILITIES.get(name))]
        for name in self.abilities:
            ABILITIES.get(name)
        default_checkpoints = profile.checkpoints
        regimes = _split(opt("--regimes")) or list(profile.regimes)
        self.regimes = [Regime.parse(r) for r in regimes]
        checkpoints = _split(opt("--checkpoints"))
        try:
            self.checkpoints = tuple(int(c) for c in checkpoints) or default_checkpoints
        except ValueError:
            from editgate.errors import ConfigError

            raise ConfigError(f"--checkpoints {opt('--checkpoints')!r}: expected integers") from None
        suite = Path(config.rootpath) / config.getini("editgate_suite_dir")
        tolerance_file = opt("--tolerances-file") or suite / "tolerances.toml"
        self.tolerances = Tolerances.load(Path(tolerance_file), opt("--tolerance"))
        self.update_baselines = bool(opt("--update-baselines"))
        baselines_dir = opt("--baselines-dir") or config.getini("editgate_baselines_dir")
        self.baselines_dir = (Path(config.rootpath) / baselines_dir if baselines_dir
                              else suite / "baselines")
        self._validate_inputs()

    def _validate_inputs(self) -> None:
        """Everything checkable without loading the model: fail before the first test, not after
        an hour of editing. Data files are parsed and validated here (a second or two)."""
        from editgate.editors.base import check_overrides
        from editgate.errors import ConfigError, DataMissing
        from editgate.models import DTYPES, validate_model_spec
        from editgate.registry import EDITORS

        settings = self.settings
        if settings.limit is not None and settings.limit < 1:
            raise ConfigError(f"--limit {settings.limit}: must be at least 1")
        validate_model_spec(settings.model, settings.device, settings.dtype)
        for option, dtype in (("--eval-dtype", settings.eval_dtype),
                              ("--generation-dtype", settings.generation_dtype)):
            if dtype not in DTYPES:
                raise ConfigError(f"unknown {option} {dtype!r}; choose one of "
                                  f"{', '.join(sorted(DTYPES))}")
        for editor, overrides in settings.hparam_overrides.items():
            check_overrides(EDITORS.get(editor), overrides)
        for ability in self.abilities:
            try:
                self.session.ability_run(ability)  # loads and validates the ability's data
            except DataMissing as exc:  # the others still run; malformed data still stops the run
                self.missing_data[ability] = (
                    f"{ability}: {exc}. Put the file there, point --data-dir (ini "
                    f"editgate_data_dir) at a folder that has it, or leave {ability} out of "
                    "--abilities")
        self.abilities = [a for a in self.abilities if a not in self.missing_data]
        self.session.requests(max(r.total for r in self.regimes))  # and the edit requests

    # ---------------------------------------------------------------- session

    @property
    def session(self):
        if not hasattr(self, "settings"):
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

    @property
    def budget_search(self) -> bool:
        return bool(self.config.getoption("--budget-search"))

    def cases(self) -> list[EditCase]:
        """The grid of edited states; under --budget-search, sequential chains are searched
        (see :meth:`budget_chains`) instead of scored on the grid."""
        return [EditCase(editor, regime, checkpoint)
                for editor in self.editors for regime in self.regimes
                if not (self.budget_search and regime.is_sequential)
                for checkpoint in regime.checkpoints(self.checkpoints)]

    def budget_chains(self) -> list:
        """(editor, sequential regime) chains whose edit budget --budget-search finds."""
        from editgate.registry import EDITORS

        if not self.budget_search:
            return []
        return [pytest.param((editor, regime), id=f"{editor}-{regime.name}")
                for editor in self.editors for regime in self.regimes
                if regime.is_sequential
                and (regime.batch_size == 1 or EDITORS.get(editor).can_batch)]

    def case_params(self) -> list:
        """Cases as pytest params; batch regimes are skipped (with the reason) for non-batch editors."""
        from editgate.registry import EDITORS

        params = []
        for case in self.cases():
            marks = []
            if case.regime.batch_size > 1 and not EDITORS.get(case.editor).can_batch:
                marks.append(pytest.mark.skip(
                    reason=f"{case.editor} edits one request per call; {case.regime.name} "
                           f"needs batches of {case.regime.batch_size}"))
            params.append(pytest.param(case, id=case.id, marks=marks))
        return params

    def ability_notes(self, abilities: list[str] | None = None) -> dict[str, str]:
        """How to read each ability's scores in this run (default: those collected), where its
        prompt style calls for it."""
        notes = {}
        for name in abilities if abilities is not None else (
                self.collected_abilities or self.golden_abilities):
            run = self.session.ability_run(name)
            note = run.ability.note(run.style)
            if note:
                notes[name] = note
        return notes

    def gated_metrics(self) -> list[tuple[str, str]]:
        pairs = []
        for name in self.abilities:
            run = self.session.ability_run(name)
            pairs.extend((name, m.name) for m in run.ability.active_metrics(run.generation))
        return pairs

    # ---------------------------------------------------------------- pytest hooks

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        from editgate.edit_success import SUCCESS_METRICS

        names = metafunc.fixturenames
        if {"edited", "ability_metric", "success_metric", "baseline_ability"} & set(names):
            self.setup()
        if "edited" in names:
            metafunc.parametrize("edited", self.case_params(), indirect=True, scope="session")
        if "ability_metric" in names:
            pairs = self.gated_metrics()
            metafunc.parametrize("ability_metric", pairs, ids=[f"{a}-{m}" for a, m in pairs])
        if "success_metric" in names:
            metafunc.parametrize("success_metric", SUCCESS_METRICS)
        if "budget_chain" in names:  # without --budget-search: no chains, deselected below
            metafunc.parametrize("budget_chain", self.budget_chains() or [None])
        if "baseline_ability" in names:  # a missing data file shows here, once per ability
            skipped = [pytest.param(a, marks=pytest.mark.skip(reason=why))
                       for a, why in self.missing_data.items()]
            metafunc.parametrize("baseline_ability", [*self.abilities, *skipped])

    def pytest_itemcollected(self, item: pytest.Item) -> None:
        """Data-set names as keywords, so ``-k sst2`` or ``-k "rome and gsm8k"`` select the
        abilities scored on those data sets (before ``-k`` deselects anything)."""
        params = getattr(getattr(item, "callspec", None), "params", {})
        ability = (params["ability_metric"][0] if "ability_metric" in params
                   else params.get("baseline_ability"))
        if ability is not None:
            item.extra_keyword_matches.update(self._keywords(ability))

    def _keywords(self, ability: str) -> tuple[str, ...]:
        from editgate.registry import ABILITIES

        if ability not in self._ability_keywords:
            self._ability_keywords[ability] = ABILITIES.get(ability)().keywords()
        return self._ability_keywords[ability]

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item],
                                      ) -> None:
        chain = lambda i: getattr(getattr(i, "callspec", None), "params", {}).get("budget_chain")
        searches = [i for i in items if chain(i) is not None]
        off = [i for i in items if "budget_chain" in i.fixturenames and chain(i) is None]
        if off:  # the budget tests without --budget-search
            config.hook.pytest_deselected(items=off)
        # Budget searches run first: each applies and reverts its own chains, so it must not
        # find the model edited by a grid case's session-scoped fixture.
        first_or_gone = {id(i) for i in searches + off}
        items[:] = searches + [i for i in items if id(i) not in first_or_gone]
        abilities: set[str] = set()
        golden: set[str] = set()
        for item in items:
            params = getattr(item, "callspec", None)
            if params is None:
                continue
            if "ability_metric" in params.params:
                abilities.add(params.params["ability_metric"][0])
            if "baseline_ability" in params.params:
                golden.add(params.params["baseline_ability"])
            case = params.params.get("edited")
            if isinstance(case, EditCase):
                # `--dist loadgroup` keeps one edit chain on one worker.
                item.add_marker(pytest.mark.xdist_group(case.group))
        self.collected_abilities = sorted(abilities - set(self.missing_data))
        self.golden_abilities = sorted(golden - set(self.missing_data))

    def pytest_report_header(self, config: pytest.Config) -> list[str]:
        """Model, profile, precisions and the kernels they run on: what a score depends on."""
        if not hasattr(self, "settings"):
            return []
        from editgate.fingerprint import compute_environment
        from editgate.models import resolve_device

        s = self.settings
        env = compute_environment(resolve_device(s.device))
        kernels = (f"{env['device']} {env.get('cpu_capability', env.get('gpu', ''))}"
                   f"{' (' + env['cpu_features'] + ')' if env.get('cpu_features') else ''}")
        return [f"editgate: model {s.model} · profile {s.profile.name} · scoring {s.eval_dtype}, "
                f"generation {s.generation_dtype}, goldens float32 · kernels {kernels}, "
                f"{env['threads']} threads, torch {env['torch']}"]

    def pytest_terminal_summary(self, terminalreporter, exitstatus: int) -> None:
        from editgate.report.plugin import run_report

        for why in self.missing_data.values():
            terminalreporter.write_line(f"skipped ability {why}", yellow=True)
        report = run_report(self.config)
        if report is None:  # no gate test ran in this process (or an xdist worker)
            return
        from editgate.summary import render_run

        buffer = io.StringIO()
        render_run(report, buffer, width=terminalreporter._tw.fullwidth,
                   color=terminalreporter.hasmarkup)
        terminalreporter.write(buffer.getvalue())
        session = self.active_session
        if session is not None and session.attention_fallback:
            terminalreporter.write_line(
                f"note: {self.settings.eval_dtype} attention has no flash kernel on this CPU; "
                f"scored with SDPA's {session.attention_fallback} backend (results keyed apart)",
                yellow=True)
        terminalreporter.write_line(resource_line())


def resource_line() -> str:
    """Peak memory of this process and its workers, and the disk the caches take."""
    import resource

    from editgate.cache import cache_root, cache_usage

    # ru_maxrss is in KiB on Linux; xdist workers count as children of the controller.
    peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
               resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / (1 << 20)
    cached = sum(size for _, size in cache_usage().values()) / (1 << 30)
    return (f"resources: peak memory {peak:.2f} GiB per process · caches {cached:.2f} GiB in "
            f"{cache_root()} (`editgate cache info`, `editgate cache clean`)")


PLUGIN_NAME = "editgate-plugin"


def pytest_configure(config: pytest.Config) -> None:
    if config.pluginmanager.has_plugin(PLUGIN_NAME) or config.option.help:
        return
    plugin = EditgatePlugin(config)
    try:
        plugin.validate_names()
        if _runs_gate_tests(config):
            plugin.setup(raising=True)  # fail before collection, with one clear line
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
