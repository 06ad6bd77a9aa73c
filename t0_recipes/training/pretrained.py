"""A finished recipe run's pre-trained model, rebuilt from its output folder without training.

A pre-trained recipe run (`t0_recipes.pipeline`) leaves in its ``--output-dir``:

* ``<stem>_config.json``: the `RecipeConfig` (preset with overrides, adapter config, tasks, seeds,
  data folder, evaluation cap);
* ``pretrain_<method>_<preset>/``: the pre-training checkpoints; ``latest`` names the last one, whose
  ``trainable.safetensors`` holds every parameter that trained (the adapters with their routing
  rows and, for the cross-encoder, the scoring head: ``adapter/`` alone lacks the head).

`load_pretrained_run` rebuilds the backbone from the preset, injects the same adapter under the
same seed, and copies the checkpoint's tensors in (`t0_recipes.training.loop.load_trainable`, which
refuses a name or shape that differs): the model the run evaluated zero-shot and few-shot from.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from t0_recipes.methods import routes_by_task
from t0_recipes.presets import FewShotHParams, Preset, PretrainHParams, load_model
from t0_recipes.protocol import ProtocolConfig
from t0_recipes.scoring.scorers import Scorer, get_scorer
from t0_recipes.training.loop import TRAINABLE_NAME, load_trainable
from t0_recipes.training.run_state import latest_checkpoint, read_run_state

__all__ = ["PretrainedRun", "load_pretrained_run", "preset_from_json"]


@dataclass
class PretrainedRun:
    """What `load_pretrained_run` returns.

    Attributes:
        model: the adapted backbone with the pre-trained weights, in eval mode, nothing trainable
            but the adapters (as after `t0_recipes.training.pretrain`).
        tokenizer: its tokenizer.
        config: the run's `RecipeConfig` as a dict.
        preset: its `Preset`, overrides included.
        protocol: its `ProtocolConfig` (tasks, held-out cluster, seeds, rows).
        scorer: its scorer.
        stem: the file stem of its records (``<method>[_<mode>]_<preset>``).
        checkpoint: the checkpoint folder the weights came from.
    """

    model: nn.Module
    tokenizer: Any
    config: dict[str, Any]
    preset: Preset
    protocol: ProtocolConfig
    scorer: Scorer
    stem: str
    checkpoint: Path


def preset_from_json(values: dict[str, Any]) -> Preset:
    """Inverse of `Preset.to_json`."""
    return Preset(**{**values, "fewshot": FewShotHParams(**values["fewshot"]),
                     "pretrain": PretrainHParams(**values["pretrain"])})


def load_pretrained_run(run_dir: str | os.PathLike, *, data_dir: str | os.PathLike | None = None) -> PretrainedRun:
    """Rebuild the pre-trained model of the recipe run in ``run_dir`` (module docstring).

    Args:
        run_dir: the run's ``--output-dir``.
        data_dir: where the rows are now (default: the run's ``--data-dir``).

    Raises:
        FileNotFoundError: no ``*_config.json``, or no pre-training checkpoint (a ``--pretrain-steps 0`` run).
        ValueError: several configs, an unfinished pre-training, or weights that do not fit the adapter.
    """
    import tensoradapt

    folder = Path(run_dir)
    configs = sorted(folder.glob("*_config.json"))
    if not configs:
        raise FileNotFoundError(f"{folder} holds no <stem>_config.json: not a finished recipe run")
    if len(configs) > 1:
        raise ValueError(f"{folder} holds several run configs ({', '.join(p.name for p in configs)}); "
                         "one recipe run per folder")
    config = json.loads(configs[0].read_text(encoding="utf-8"))
    preset = preset_from_json(config["preset"])
    method = config["method"]
    stem = configs[0].name.removesuffix("_config.json")
    pretrain_dir = folder / f"pretrain_{method}_{preset.name}"
    checkpoint = latest_checkpoint(pretrain_dir)
    if checkpoint is None:
        raise FileNotFoundError(f"{pretrain_dir} holds no pre-training checkpoint (a run with --pretrain-steps 0?)")
    state = read_run_state(checkpoint)
    if state.step != state.total_steps:
        raise ValueError(f"{checkpoint} is at step {state.step} of {state.total_steps}: pre-training did not finish")

    model, tokenizer = load_model(preset, config["model"])
    with torch.random.fork_rng(devices=[]):  # as the recipe: the adapter's init from the run's seed
        torch.manual_seed(preset.seed)
        tensoradapt.inject(model, tensoradapt.AdapterConfig.from_dict(config["adapter"]))
    scorer = get_scorer(preset.scorer)
    extra = scorer.extra_trainable(model)
    for parameter in extra:  # trainable as in pre-training, so the names match the checkpoint's
        parameter.requires_grad_(True)
    route = tensoradapt.use_routing if routes_by_task(method) else None
    wrapper, _, _ = scorer.pretrain_parts(model, scorer.collator(tokenizer, preset.pretrain.max_length), route=route)
    load_trainable(wrapper, checkpoint / TRAINABLE_NAME)
    for parameter in extra:
        parameter.requires_grad_(False)

    fewshot = preset.fewshot
    protocol = ProtocolConfig(
        tasks=config["tasks"], hold_out=config.get("hold_out", []), seeds=config["seeds"],
        data_dir=str(data_dir) if data_dir is not None else config["data_dir"], source=config["source"],
        eval_max_rows=config["eval_max_rows"], eval_batch_size=fewshot.eval_batch_size,
        eval_templates=fewshot.eval_templates, max_length=fewshot.max_length,
    )
    return PretrainedRun(model=model.eval(), tokenizer=tokenizer, config=config, preset=preset, protocol=protocol,
                         scorer=scorer, stem=stem, checkpoint=checkpoint)
