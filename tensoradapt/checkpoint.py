"""Save and load adapters, one call each way: `save_pretrained` / `from_pretrained` (as PEFT's).

A checkpoint is a folder:

* ``adapter_model.safetensors``: every adapter parameter as ``"<module>.<bank|combiner>.<name>"``,
  and T-REX's router buffers when set: ``"<module>.combiner.task_prior" (n_tasks, k)`` and
  ``"<module>.combiner.calibrated" (r1 * r2,)``. Those two are non-persistent buffers, kept out
  of the model's ``state_dict`` (a fresh model has none, so a strict ``load_state_dict`` of a
  state holding them would fail), so only this file carries them.
* ``semantic_prior.safetensors`` + ``semantic_prior.json`` (T-REX, when the model has a
  `SemanticPrior`, see `tensoradapt.trex.set_semantic_prior`): the centroids and the encoder name.
* ``adapter_config.json``: the `AdapterConfig` fields, plus ``"sha256": {file name: hex digest}``
  of every file above.

Every file is written to a temporary name and moved into place (`tensoradapt.atomic`), the config
last: a crash leaves the old checkpoint, or new files whose hashes the old config does not match
(refused on load). Loading checks the hashes before parsing anything, and the checkpoint against
the model before changing anything. A damaged file raises `CheckpointError` naming it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load as load_bytes
from safetensors.torch import save_file
from torch import nn

from tensoradapt.atomic import atomic_write
from tensoradapt.config import CONFIG_NAME, SHA256_KEY, AdapterConfig
from tensoradapt.layers import AdaptedLinear
from tensoradapt.model import _CONFIG_ATTR, _inject, adapted_layers, adapter_config

if TYPE_CHECKING:  # the semantic prior loads its encoder's libraries: imported where used
    from tensoradapt.routing.semantic_prior import SemanticPrior

__all__ = [
    "WEIGHTS_NAME",
    "CheckpointError",
    "adapter_state_dict",
    "from_pretrained",
    "load_adapter",
    "save_adapter",
    "save_pretrained",
]

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "adapter_model.safetensors"
#: T-REX router buffers saved beside the parameters (``TokenRouter`` attributes).
_ROUTER_BUFFERS = ("task_prior", "calibrated")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used as it is: not UTF-8 / JSON, not a config that
    validates, not a safetensors file, or bytes whose sha256 differs from the one recorded when
    it was saved.

    Attributes:
        path: the file.
        problem: what is wrong with it (the message is ``"checkpoint file <path> <problem>"``).
    """

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"checkpoint file {self.path} {problem}")

    def __reduce__(self):
        return type(self), (self.path, self.problem)


def _parameters(layers: dict[str, AdaptedLinear]) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for name, layer in layers.items():
        for part in ("bank", "combiner"):
            for parameter_name, parameter in getattr(layer, part).named_parameters():
                state[f"{name}.{part}.{parameter_name}"] = parameter.detach()
    return state


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters' parameters: ``"<module name>.<bank|combiner>.<parameter>" -> tensor``."""
    return _parameters(adapted_layers(model))


def _router_buffers(layers: dict[str, AdaptedLinear]) -> dict[str, torch.Tensor]:
    """T-REX's set router buffers: ``"<module>.combiner.task_prior"`` / ``".calibrated"`` -> tensor."""
    state = {}
    for name, layer in layers.items():
        if layer.combiner.token_routed:
            for buffer in _ROUTER_BUFFERS:
                value = getattr(layer.combiner, buffer)
                if value is not None:
                    state[f"{name}.combiner.{buffer}"] = value.detach()
    return state


def _router_buffer_shapes(layers: dict[str, AdaptedLinear], config: AdapterConfig) -> dict[str, tuple[int, ...]]:
    """The router buffer keys a checkpoint may hold for ``layers`` and their shapes."""
    shapes = {}
    for name, layer in layers.items():
        if layer.combiner.token_routed:
            router = layer.combiner
            shapes[f"{name}.combiner.task_prior"] = (config.n_tasks, router.n_clusters)
            shapes[f"{name}.combiner.calibrated"] = (router.n_pairs,)
    return shapes


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _prior_files() -> tuple[str, str]:
    from tensoradapt.routing.semantic_prior import _PRIOR_FILES

    return _PRIOR_FILES


def _check_prior(config: AdapterConfig, prior) -> None:
    if config.method != "trex":
        raise ValueError(f"a semantic prior goes with T-REX adapters only, but the model has method={config.method!r}")
    if prior.n_clusters != config.trex_n_clusters:
        raise ValueError(
            f"the semantic prior has {prior.n_clusters} centroids but the model's routers read "
            f"trex_n_clusters={config.trex_n_clusters} similarities"
        )
    prior.encoder.identity  # noqa: B018 - SemanticPrior.save records it: fail before any file is written


def save_pretrained(
    model: nn.Module, directory: str | os.PathLike, *, semantic_prior: SemanticPrior | None = None
) -> Path:
    """Write an injected model's adapters into ``directory``; `from_pretrained` reads them back.

    Writes ``adapter_model.safetensors`` (parameters, T-REX's task prior and calibration),
    the T-REX semantic prior when there is one, and ``adapter_config.json`` (the config and the
    files' sha256) last, each atomically. The base model is not saved: it is the one you
    injected (``AutoModel.from_pretrained(name)``). Example::

        tensoradapt.save_pretrained(model, "ckpt")
        model = tensoradapt.from_pretrained(T5ForConditionalGeneration.from_pretrained("t5-small"), "ckpt")

    Args:
        model: a model injected by `tensoradapt.inject` (merged or not: the adapters are saved,
            not the merged weights).
        directory: created if missing; files of an earlier save are replaced.
        semantic_prior: a T-REX `SemanticPrior` (centroids ``(k, dim)``) to save with the
            adapters; ``None`` saves the one kept with the model
            (`tensoradapt.trex.set_semantic_prior`, `from_pretrained`), if any.

    Returns:
        ``directory`` as a ``Path``.
    """
    directory = Path(directory)
    config = adapter_config(model)
    if semantic_prior is None:
        from tensoradapt.trex import semantic_prior as kept_prior

        semantic_prior = kept_prior(model)
    if semantic_prior is not None:
        _check_prior(config, semantic_prior)
    layers = adapted_layers(model)
    state = {**_parameters(layers), **_router_buffers(layers)}
    tensors = {key: value.contiguous().cpu() for key, value in state.items()}
    # One metadata key: safetensors orders several in a random (per-map) order, so equal weights
    # would give files, and recorded sha256s, that differ from one save to the next.
    metadata = {"format": "pt"}
    hashes: dict[str, str] = {}

    def write_weights(temporary: str) -> None:
        save_file(tensors, temporary, metadata=metadata)
        hashes[WEIGHTS_NAME] = _sha256(Path(temporary))  # the bytes that are moved into place

    atomic_write(directory / WEIGHTS_NAME, write_weights)
    if semantic_prior is not None:
        semantic_prior.save(directory)
        for name in _prior_files():
            hashes[name] = _sha256(directory / name)
    text = json.dumps({**config.to_dict(), SHA256_KEY: hashes}, indent=2, sort_keys=True) + "\n"
    atomic_write(directory / CONFIG_NAME, lambda temporary: Path(temporary).write_text(text))
    return directory


def save_adapter(model: nn.Module, directory: str | os.PathLike) -> Path:
    """Write ``adapter_config.json`` and ``adapter_model.safetensors`` into ``directory``:
    `save_pretrained` without an explicit semantic prior."""
    return save_pretrained(model, directory)


@dataclass
class _Checkpoint:
    """A checkpoint read and verified, not yet checked against a model."""

    directory: Path
    config: AdapterConfig
    tensors: dict[str, torch.Tensor]
    hashes: dict[str, str] | None  # None: written before hashes were recorded
    semantic_prior: object | None


def _read_config(path: Path) -> tuple[AdapterConfig, dict[str, str] | None]:
    data = path.read_bytes()  # FileNotFoundError names the path
    try:
        values = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise CheckpointError(path, f"is not UTF-8 text: {error}") from error
    except json.JSONDecodeError as error:
        raise CheckpointError(path, f"is not valid JSON: {error}") from error
    if not isinstance(values, dict):
        raise CheckpointError(path, f"is not a JSON object of config fields (it holds a {type(values).__name__})")
    hashes = values.pop(SHA256_KEY, None)
    if hashes is not None and not (
        isinstance(hashes, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in hashes.items())
    ):
        raise CheckpointError(
            path, f"has a malformed {SHA256_KEY!r} entry (want {{file name: hex digest}}): {hashes!r}"
        )
    try:
        config = AdapterConfig.from_dict(values)
    except (TypeError, ValueError) as error:
        raise CheckpointError(path, f"does not hold a valid adapter config: {error}") from error
    return config, hashes


def _verified_bytes(path: Path, hashes: dict[str, str] | None, config_path: Path) -> bytes:
    data = path.read_bytes()
    if hashes is None:
        return data
    expected = hashes.get(path.name)
    if expected is None:
        raise CheckpointError(config_path, f"records no sha256 for {path.name}")
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise CheckpointError(
            path,
            f"has sha256 {actual}, not the {expected} recorded in {config_path} when it was saved: the file was "
            "changed or damaged since (or a save stopped between the two files); save the adapters again or "
            "restore the file",
        )
    return data


def _read_checkpoint(directory: str | os.PathLike) -> _Checkpoint:
    """Read, verify (sha256) and parse a checkpoint; `CheckpointError` for a damaged file."""
    directory = Path(directory)
    config_path = directory / CONFIG_NAME
    config, hashes = _read_config(config_path)
    if hashes is None:
        logger.warning(
            "%s records no sha256 (saved before tensoradapt recorded them): its weights load unverified; "
            "save the adapters again to add the hashes", config_path
        )
    weights_path = directory / WEIGHTS_NAME
    data = _verified_bytes(weights_path, hashes, config_path)
    try:
        tensors = load_bytes(data)
    except Exception as error:  # safetensors raises its own error type for every kind of damage
        raise CheckpointError(weights_path, f"is not a valid safetensors file: {error}") from error
    prior = None
    prior_files = _prior_files()
    if hashes is not None and all(name in hashes for name in prior_files):
        from tensoradapt.routing.semantic_prior import SemanticPrior

        for name in prior_files:
            _verified_bytes(directory / name, hashes, config_path)
        try:
            prior = SemanticPrior.load(directory)
        except Exception as error:  # JSON, safetensors or field errors: the file is what is wrong
            problem = f"does not hold a valid semantic prior: {error}"
            raise CheckpointError(directory / prior_files[1], problem) from error
    return _Checkpoint(directory, config, tensors, hashes, prior)


def _check(layers: dict[str, AdaptedLinear], config: AdapterConfig, checkpoint: _Checkpoint) -> None:
    """Raise ``ValueError`` if ``checkpoint`` does not fit ``layers`` (nothing is changed)."""
    directory, saved_config = checkpoint.directory, checkpoint.config
    if saved_config.method != config.method:
        raise ValueError(
            f"checkpoint {directory} holds method={saved_config.method!r} but the model has {config.method!r}; "
            "inject the model with the checkpoint's config (AdapterConfig.from_json(directory)) or use "
            "tensoradapt.from_pretrained(base_model, directory)"
        )
    buffer_shapes = _router_buffer_shapes(layers, config)
    saved = {key: value for key, value in checkpoint.tensors.items() if key not in buffer_shapes}
    expected = _parameters(layers)
    for key in sorted(set(saved) | set(expected)):
        if key not in expected:
            raise ValueError(f"checkpoint key {key!r} has no parameter in the model: the adapted modules differ")
        if key not in saved:
            raise ValueError(f"model parameter {key!r} is missing from checkpoint {directory}")
        if saved[key].shape != expected[key].shape:
            raise ValueError(
                f"checkpoint key {key!r} has shape {tuple(saved[key].shape)} but the model expects "
                f"{tuple(expected[key].shape)} (different dims, ranks, tasks or heads)"
            )
    for key, shape in buffer_shapes.items():
        value = checkpoint.tensors.get(key)
        if value is not None and tuple(value.shape) != shape:
            raise ValueError(
                f"checkpoint key {key!r} has shape {tuple(value.shape)} but the model expects {shape} "
                "(task prior: (n_tasks, trex_n_clusters); calibration: (trex_down * trex_up,))"
            )
    # Settings the shapes cannot reveal: loading across them would silently change every output.
    settings = [
        ("lora_alpha", saved_config.scaling, config.scaling, saved_config.lora_alpha, config.lora_alpha),
        ("normalize_outer", saved_config.normalize_outer, config.normalize_outer, None, None),
    ]
    if config.is_routed:
        saved_norm, norm = saved_config.resolved_routing_normalization, config.resolved_routing_normalization
        settings.append(("routing_normalization", saved_norm, norm, saved_norm, norm))
    if config.method == "trex":
        settings += [(name, getattr(saved_config, name), getattr(config, name), None, None)
                     for name in ("trex_prior_mix", "trex_top_k")]
    if config.method in ("tlora", "tensorpoly_i", "tensorpoly_ii") or (config.method == "trex" and config.trex_entangled):
        # the init sets each leaf's constant scale (``init='matched'``), which the weights do not hold
        settings.append(("init", saved_config.init, config.init, None, None))
    for name, saved_value, value, saved_shown, shown in settings:
        if saved_value != value:
            saved_shown = saved_value if saved_shown is None else saved_shown
            shown = value if shown is None else shown
            raise ValueError(
                f"checkpoint {directory} was trained with {name}={saved_shown!r} but the model has {name}={shown!r}; "
                "inject the model with the checkpoint's config (AdapterConfig.from_json(directory)) or use "
                "tensoradapt.from_pretrained(base_model, directory)"
            )


@torch.no_grad()
def _copy(layers: dict[str, AdaptedLinear], checkpoint: _Checkpoint) -> None:
    """Copy a checked checkpoint into ``layers``: parameters, then T-REX's router buffers.

    A checkpoint with hashes says the whole state: a buffer it lacks was not set and is cleared.
    One written before hashes existed never held buffers, so the model's are left as they are.
    """
    for key, parameter in _parameters(layers).items():
        parameter.copy_(checkpoint.tensors[key])
    for name, layer in layers.items():
        if not layer.combiner.token_routed:
            continue
        router = layer.combiner
        prior = checkpoint.tensors.get(f"{name}.combiner.task_prior")
        calibrated = checkpoint.tensors.get(f"{name}.combiner.calibrated")
        if prior is not None or checkpoint.hashes is not None:
            router.set_task_prior(prior)
        if calibrated is not None or checkpoint.hashes is not None:
            placement = dict(device=router.token_weight.device, dtype=router.token_weight.dtype)
            router.calibrated = None if calibrated is None else calibrated.to(**placement).clone()


def load_adapter(model: nn.Module, directory: str | os.PathLike) -> nn.Module:
    """Load adapters saved by `save_pretrained` / `save_adapter` into an injected ``model``.

    Verifies the files' sha256, checks the checkpoint against the model, then copies the
    parameters, T-REX's task prior and calibration, and keeps the semantic prior with the model
    (`tensoradapt.trex.semantic_prior`). Nothing changes unless everything fits.

    A merged model is refused: its base weights hold the merged task's delta of the *current*
    adapters, which new adapters would not replace (stale outputs). Unmerge, load, merge again::

        tensoradapt.unmerge(model)
        tensoradapt.load_adapter(model, directory)
        tensoradapt.merge(model, task)

    Raises:
        CheckpointError: a damaged file (its path and what is wrong).
        FileNotFoundError: a file is missing.
        ValueError: the model is merged; the saved method differs; a setting that changes the
            output but no shape differs (``lora_alpha`` through the scaling, ``normalize_outer``,
            ``routing_normalization``, T-REX's ``trex_prior_mix`` / ``trex_top_k``); or the first
            key (in sorted order) that is missing, unexpected or of another shape is named.
    """
    directory = Path(directory)
    config = adapter_config(model)
    layers = adapted_layers(model)
    merged = [layer.merged_task for layer in layers.values() if layer.merged]
    if merged:
        task = merged[0]
        task = int(task) if isinstance(task, torch.Tensor) else task
        raise ValueError(
            f"the adapters are merged for task {task}: the base weights hold that task's delta of the current "
            "adapters, which loading new ones would leave behind (stale outputs). Call tensoradapt.unmerge(model), "
            f"load, then tensoradapt.merge(model, {task}) again"
        )
    checkpoint = _read_checkpoint(directory)
    _check(layers, config, checkpoint)
    _copy(layers, checkpoint)
    if config.method == "trex" and (checkpoint.hashes is not None or checkpoint.semantic_prior is not None):
        from tensoradapt.trex import set_semantic_prior

        set_semantic_prior(model, checkpoint.semantic_prior)
    return model


def from_pretrained(base_model: nn.Module, directory: str | os.PathLike, *, is_trainable: bool = False) -> nn.Module:
    """Inject ``base_model`` with the config saved in ``directory`` and load the adapters: one call.

    The counterpart of `save_pretrained`, as PEFT's ``PeftModel.from_pretrained``: the files are
    read and verified (sha256) and the adapters built and loaded before the first module of
    ``base_model`` is replaced, so a failure leaves ``base_model`` as it was. T-REX's task prior,
    calibration and semantic prior come back with the weights. Example::

        base = T5ForConditionalGeneration.from_pretrained("t5-small")
        model = tensoradapt.from_pretrained(base, "ckpt")
        model.generate(input_ids, task_ids=3)

    Args:
        base_model: the model the adapters were trained on, without adapters.
        directory: a folder written by `save_pretrained`.
        is_trainable: ``False`` (PEFT's default): every parameter frozen and the model in eval
            mode, for inference. ``True``: the parameters of the saved training mode
            (``config.mode``) train, as after `tensoradapt.inject`.

    Returns:
        ``base_model``, injected and loaded.

    Raises:
        ValueError: ``base_model`` already has adapters (use `load_adapter`), or the checkpoint
            does not fit it (see `load_adapter`). CheckpointError / FileNotFoundError: as `load_adapter`.
    """
    if getattr(base_model, _CONFIG_ATTR, None) is not None:
        raise ValueError(
            f"{type(base_model).__name__} already has tensoradapt adapters, and from_pretrained injects a plain base "
            "model; to load the weights into this one call tensoradapt.load_adapter(model, directory)"
        )
    checkpoint = _read_checkpoint(directory)

    def load(layers: dict[str, AdaptedLinear]) -> None:
        _check(layers, checkpoint.config, checkpoint)
        _copy(layers, checkpoint)

    model = _inject(base_model, checkpoint.config, prepare=load)
    if checkpoint.semantic_prior is not None:
        from tensoradapt.trex import set_semantic_prior

        set_semantic_prior(model, checkpoint.semantic_prior)
    if not is_trainable:
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        model.eval()
    return model
