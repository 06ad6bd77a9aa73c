"""`benchmarks/t0_proxy.py`: every run of the proxy evaluates the T0 tasks and holds out the same topic cluster."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from t0_recipes.data.holdout import TOPIC_CLUSTER

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "t0_proxy.py"


def _proxy():
    spec = importlib.util.spec_from_file_location("t0_proxy", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _commands(monkeypatch, argv) -> list[list[str]]:
    """The recipe commands ``main(argv)`` would run (nothing is run)."""
    proxy = _proxy()
    seen = []

    def record(commands, jobs):
        seen.extend(command for _, command in commands)
        raise SystemExit(0)

    monkeypatch.setattr(proxy, "_run_all", record)
    with pytest.raises(SystemExit):
        proxy.main(["--data-dir", "data", *argv])
    return seen


def _option(command: list[str], flag: str) -> list[str]:
    """The values after ``flag`` up to the next option."""
    start = command.index(flag) + 1
    end = next((i for i in range(start, len(command)) if command[i].startswith("--")), len(command))
    return command[start:end]


def test_every_run_holds_out_the_topic_cluster(monkeypatch):
    proxy = _proxy()
    assert proxy.HOLD_OUT == TOPIC_CLUSTER
    commands = _commands(monkeypatch, [])
    assert len(commands) == 2 * len(proxy.METHODS)  # pre-trained and no-pre-training runs
    for command in commands:
        assert _option(command, "--tasks") == list(proxy.T0_TASKS)
        assert _option(command, "--hold-out") == list(TOPIC_CLUSTER)
    baselines = [command for command in commands if "--pretrain-steps" in command]
    assert len(baselines) == len(proxy.METHODS)
    for command in commands:  # the no-pre-training baseline: the first 3 seeds, for time
        seeds = ["42", "1024", "0"] if command in baselines else ["42", "1024", "0", "1", "32"]
        assert _option(command, "--seeds") == seeds


def test_hold_out_alone_turns_the_cluster_off(monkeypatch):
    for command in _commands(monkeypatch, ["--methods", "lora", "--hold-out"]):
        assert "--hold-out" not in command


def test_learning_rates_reach_every_run_and_parse_in_the_recipe(monkeypatch):
    from t0_recipes.cli import base_parser

    commands = _commands(monkeypatch, ["--methods", "tensorpoly_ii", "--lr", "0.01", "--lr-routing", "0.3"])
    assert len(commands) == 2
    for command in commands:
        assert _option(command, "--lr") == ["0.01"] and _option(command, "--lr-routing") == ["0.3"]
        recipe_args = command[command.index("--preset"):]
        parsed, _ = base_parser("x").parse_known_args(recipe_args)
        assert (parsed.lr, parsed.lr_routing) == (0.01, 0.3)
    assert all("--lr" not in command for command in _commands(monkeypatch, ["--methods", "lora"]))
