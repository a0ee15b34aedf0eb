"""Lifecycle hooks through pluggy's own calling: any subset of a hook's arguments, failures isolated and reported
once, failed plugins silenced, the documented example run as written; and the loop's reads of the device."""

from __future__ import annotations

import importlib.metadata as md
import re
import signal
import warnings
from pathlib import Path

import pytest

from diffratio import DivergenceSpec, hookimpl
from diffratio.engine import training_loop
from diffratio.guard import NonFiniteGuard
from diffratio.recipe import load_recipe
from diffratio.registry import Provider, Registry
from diffratio.signals import StopRequested, handled_signals

from conftest import RECIPES, ROOT, TINY

BASE = [*TINY, "strategy.threads=1", "loggers.tensorboard=false"]  # 30 steps, logs and checkpoints every 10


def registry_with(*plugins: tuple[object, str]) -> Registry:
    reg = Registry()
    for plugin, name in plugins:
        reg.register(plugin, Provider(name, f"pkg-{name}", "1.0"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return reg.load(entry_points=False)


def train(reg: Registry, run_dir: Path, *extra: str) -> None:
    training_loop(load_recipe(RECIPES / "toy2d.toml", [*BASE, *extra], registry=reg), run_dir, reg, progress=False)


class StepOnly:
    def __init__(self) -> None:
        self.steps: list[int] = []

    @hookimpl
    def diffratio_on_step_end(self, step: int) -> None:
        self.steps.append(step)


def test_an_implementation_with_one_argument_receives_every_logging_step(tmp_path: Path) -> None:
    probe = StepOnly()
    train(registry_with((probe, "steponly")), tmp_path / "run", "run.log_every=5")
    assert probe.steps == [5, 10, 15, 20, 25, 30]


class FailsToRegister:
    def __init__(self) -> None:
        self.calls = 0

    @hookimpl
    def diffratio_divergences(self):
        yield DivergenceSpec(name="half-made", cls=int)

    @hookimpl
    def diffratio_on_step_end(self) -> None:
        self.calls += 1


def test_a_plugin_whose_registration_failed_receives_no_hooks(tmp_path: Path) -> None:
    failed = FailsToRegister()
    reg = registry_with((failed, "halfmade"))
    assert [f.plugin for f in reg.failures] == ["halfmade"] and "half-made" not in reg.names("divergence")
    train(reg, tmp_path / "run")
    assert failed.calls == 0


class Raises:
    def __init__(self) -> None:
        self.calls = 0

    @hookimpl
    def diffratio_on_step_end(self, step: int) -> None:
        self.calls += 1
        raise ValueError(f"broken at step {step}")


def test_a_failing_implementation_is_reported_once_and_the_others_still_run(tmp_path: Path) -> None:
    bad, good = Raises(), StepOnly()
    with pytest.warns(UserWarning) as record:
        train(registry_with((bad, "raiser"), (good, "steponly")), tmp_path / "run")
    ours = [str(w.message) for w in record if "raiser" in str(w.message)]
    assert ours == ["plugin 'raiser' (package pkg-raiser) raised in diffratio_on_step_end: ValueError: broken at "
                    "step 10; the run goes on (further errors of this hook are not reported)"]
    assert bad.calls == 3 and good.steps == [10, 20, 30]


class FakeEntryPoint:
    def __init__(self, name: str, exc: BaseException) -> None:
        self.name, self.exc, self.dist = name, exc, None

    def load(self) -> object:
        raise self.exc


@pytest.mark.parametrize("exc", [SystemExit(3), KeyboardInterrupt(), ImportError("no module named x")],
                         ids=["sys.exit", "KeyboardInterrupt", "ImportError"])
def test_anything_raised_at_import_is_a_reported_failure(exc: BaseException, monkeypatch) -> None:
    monkeypatch.setattr(md, "entry_points", lambda group: [FakeEntryPoint("bad", exc)])
    with handled_signals():  # as under dr-train: a real Ctrl-C would arrive as StopRequested
        with pytest.warns(UserWarning, match=rf"plugin 'bad' from package 'unknown' failed and is skipped: import "
                                             rf"failed: {type(exc).__name__}"):
            reg = Registry().load()
    assert "dijs" in reg.names("divergence")


def test_a_real_interrupt_during_plugin_import_is_not_swallowed(monkeypatch) -> None:
    monkeypatch.setattr(md, "entry_points", lambda group: [FakeEntryPoint("slow", StopRequested(signal.SIGINT))])
    before = signal.getsignal(signal.SIGINT)  # Python's own, or SIG_IGN under a background shell job
    with pytest.raises(StopRequested):
        Registry().load()
    assert signal.getsignal(signal.SIGINT) is before  # outside dr-train the handler is left as it was
    monkeypatch.setattr(md, "entry_points", lambda group: [FakeEntryPoint("slow", KeyboardInterrupt())])
    with pytest.raises(KeyboardInterrupt):
        Registry().load()


def test_the_documented_example_runs_as_written(tmp_path: Path) -> None:
    text = (ROOT / "docs" / "plugins.md").read_text()
    section = text[text.index("## 10. Lifecycle hooks"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "docs/plugins.md", "exec"), namespace)
    watcher = namespace["Watcher"]()
    train(registry_with((watcher, "watcher")), tmp_path / "run", "run.steps=20")
    assert watcher.events == [
        ("start", 0), ("step", 10, 0), ("checkpoint", 10, True), ("step", 20, 0), ("checkpoint", 20, True),
        ("evaluation", 20, "energy-distance/energy_distance"), ("end", 20)]


def test_the_loop_reads_the_device_once_per_logging_window(tmp_path: Path, monkeypatch) -> None:
    reads: list[int] = []
    real_read = NonFiniteGuard.read

    def counted(self: NonFiniteGuard, strategy, stop: int) -> int:
        reads.append(len(self.pending))
        return real_read(self, strategy, stop)

    monkeypatch.setattr(NonFiniteGuard, "read", counted)
    train(registry_with(), tmp_path / "run", "run.checkpoint_every=15", "run.log_every=10")
    assert reads == [10, 5, 5, 10]  # at steps 10, 15 (checkpoint), 20 and 30
