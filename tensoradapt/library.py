"""A library of LoRAs in and out: PEFT LoRA folders become one routed model, and every task of a
routed model becomes a PEFT LoRA folder again.

Import (`from_lora_library`), ``L`` LoRAs for one base, task ``i`` = LoRA ``i``:

| method | what each task is | exact |
|---|---|---|
| ``poly`` | skill ``i`` of a Poly inventory of ``S = L`` skills, routing row ``i`` one-hot | yes |
| ``poly``, ``n_skills=S < L`` | a routing row over ``S`` skills shared by every task, fitted (`tensoradapt.shared_skills`) | no: a fit |
| ``mhr`` | the same, routed one-hot in every one of ``n_heads`` heads | yes |
| ``lora`` | one LoRA, no routing (``L = 1``) | yes |
| ``tensorpoly_i`` | TensorPoly-I over ``L * R`` simple tensors; task ``i`` owns ranks ``i R .. i R + R - 1``: its LoRA's columns fitted as entangled tensors of rank ``R``, order ``N`` | no: a fit |
| ``tensorpoly_ii`` | TensorPoly-II over ``L`` leaf sets; task ``i`` mixes only set ``i``: its columns fitted by one simple tensor (TensorPoly-II's task adapter is a single product per column) | no: a fit |
| ``tlora`` | one LoRA fitted as a TLoRA of rank ``R`` (``L = 1``) | no: a fit |

One-hot routing is exact because the routers run with ``routing_normalization='identity'``: the
routing tensor holds the weights themselves, so a row is exactly ``0`` / ``1`` (sum
normalisation divides by ``1 + 1e-12`` even where the sigmoids of ``+-1000`` round to 0 and 1). Mixing skills with weights
``0`` and ``1`` adds exact zeros, so task ``i``'s ``A_t``, ``B_t`` are LoRA ``i``'s bit for bit.

LoRAs may differ in rank and in the modules they adapt:

* ranks: the library's rank ``r`` is the largest; a LoRA of rank ``r_i < r`` is zero-padded
  (columns ``r_i ..`` of ``A`` and rows of ``B`` zero), which adds exact zeros;
* modules: the routed model adapts the union of all LoRAs' modules; where a LoRA has no
  module its skill is zero there (as in PEFT, where that module is not adapted);
* scaling: each LoRA's ``alpha / r`` (``alpha / sqrt(r)`` with rsLoRA; per module with
  ``rank_pattern`` / ``alpha_pattern``) is folded into its ``B``, and the routed model's own
  scaling is 1 (``lora_alpha = lora_rank``).

The compressed fits first rebalance every LoRA without changing its update (``A B = A' B'``
with ``A' = Q_A U S^1/2``, ``B' = S^1/2 V^T Q_B^T`` from the SVD of the small core, so both sides
carry the same share of the norm and the columns come in order of importance), then fit each
column of ``A'`` and row of ``B'`` with `tensoradapt.algebra.fit_leaves` (truncated SVD at order
2, optimal; tensorly's CP-ALS above). The error reported per layer is measured on the routed
model's own task matrices against the LoRAs': ``sqrt(sum_t ||dW_t' - dW_t||^2 / sum_t ||dW_t||^2)``
(Frobenius, ``dW_t = s_t A_t B_t``), also per task over layers; an exact import reports round-off.

Export (`export_lora_library`): task ``t``'s adapter of every task-routed method is a plain
LoRA, written by `tensoradapt.export.export_peft_lora` to ``<directory>/<name>``:

| method | rank of a task's LoRA |
|---|---|
| ``lora``, ``poly``, ``mhr`` | ``lora_rank`` (Poly mixes the ``S`` skills' ``A`` and, apart, their ``B``: ``A_t = sum_s w_s A_s`` is ``d_in x r``; MHR assembles its ``H`` head blocks into one ``d_in x r``) |
| ``tlora``, ``tensorpoly_i``, ``tensorpoly_ii`` | ``lora_rank``: the materialised ``A_t``, ``B_t`` |
| ``trex`` | ``min(r1, r2)``: the routing-averaged LoRA, an approximation; its error is measured on ``inputs`` by `tensoradapt.trex.trex_export_error` |

Rank components that add exactly nothing (a zero column of ``A_t`` or zero row of ``B_t``) and
layers where a task's adapter is exactly zero are left out, so an imported library is written
back at each LoRA's own rank and on its own modules.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from tensoradapt.algebra.entangled import check_positive
from tensoradapt.algebra.interop import fit_leaves
from tensoradapt.atomic import atomic_write
from tensoradapt.config import AdapterConfig
from tensoradapt.export import export_peft_lora, task_lora_matrices
from tensoradapt.layers import AdaptedLinear, linear_dims
from tensoradapt.model import _CONFIG_ATTR, _inject, adapted_layers, adapter_config
from tensoradapt.peft_lora import LoraLibraryError, PeftLora, read_peft_lora
from tensoradapt.shared_skills import fit_shared_skills, stack_pairs

__all__ = [
    "COMPRESSED_METHODS",
    "EXACT_METHODS",
    "LIBRARY_INDEX",
    "LibraryExport",
    "LibraryImport",
    "combined_error",
    "export_lora_library",
    "from_lora_library",
]

logger = logging.getLogger(__name__)

#: Methods whose import reproduces every LoRA exactly.
EXACT_METHODS: tuple[str, ...] = ("lora", "poly", "mhr")
#: Methods whose import fits leaves to the LoRAs (approximate; errors reported).
COMPRESSED_METHODS: tuple[str, ...] = ("tlora", "tensorpoly_i", "tensorpoly_ii")
#: The index `export_lora_library` writes beside the task folders.
LIBRARY_INDEX = "library.json"

PathLike = str | os.PathLike


# ------------------------------------------------------------------------------------- reports


@dataclass
class LibraryImport:
    """What `from_lora_library` built, and how far it is from the LoRAs.

    Attributes:
        model: the routed model (the base model, adapted in place); task ``i`` is ``names[i]``.
        names: task names, in task-id order.
        method: the method imported into.
        exact: whether the method reproduces the LoRAs exactly (``poly``, ``mhr``, ``lora``).
        ranks: ``{name: the LoRA's largest rank}``.
        layer_errors: ``{module: relative Frobenius error of the updates over all tasks}``
            (round-off for an exact import).
        task_errors: ``{name: relative error of that task's updates over all layers}``.
        update_norms: ``{name: ||dW_t||_F of the LoRA's updates over all layers}``, the weights
            that combine the per-task errors into `error`.
    """

    model: nn.Module = field(repr=False)
    names: list[str]
    method: str
    exact: bool
    ranks: dict[str, int]
    layer_errors: dict[str, float] = field(repr=False)
    task_errors: dict[str, float]
    update_norms: dict[str, float] = field(repr=False, default_factory=dict)

    def task_id(self, name: str) -> int:
        """The task id of the LoRA named ``name``."""
        if name not in self.names:
            raise KeyError(f"no LoRA named {name!r}; the library holds {self.names}")
        return self.names.index(name)

    @property
    def max_layer_error(self) -> float:
        """The largest per-layer relative error."""
        return max(self.layer_errors.values(), default=0.0)

    @property
    def error(self) -> float:
        """The relative error over every layer and task: ``sqrt(sum ||dW' - dW||^2 / sum ||dW||^2)``."""
        return combined_error(self.task_errors, self.update_norms)

    def summary(self) -> str:
        """A plain-text table: per task its id, rank and error; then the per-layer errors."""
        kind = "exact" if self.exact else "fitted"
        lines = [f"{len(self.names)} LoRAs imported as {self.method} ({kind})", "task  id  rank  relative error"]
        lines += [f"{name}  {i}  {self.ranks[name]}  {self.task_errors[name]:.3g}" for i, name in enumerate(self.names)]
        lines.append("layer  relative error")
        lines += [f"{name}  {error:.3g}" for name, error in self.layer_errors.items()]
        return "\n".join(lines)


@dataclass
class LibraryExport:
    """What `export_lora_library` wrote.

    Attributes:
        directory: the library folder (holding `LIBRARY_INDEX` and one folder per task).
        paths: ``{name: PEFT LoRA folder}``, in task-id order.
        ranks: ``{name: the written LoRA's r}``.
        exact: whether every written LoRA computes its task exactly (all but T-REX).
        errors: T-REX only, when ``inputs`` were given: ``{name: trex_export_error(...)}``.
    """

    directory: Path
    paths: dict[str, Path]
    ranks: dict[str, int]
    exact: bool
    errors: dict[str, dict] | None = None


# ------------------------------------------------------------------------------------ checking


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not name or name in (".", "..") or re.search(r"[/\\]", name):
        raise ValueError(f"task name {name!r} is not a folder name; use a non-empty name without '/' or '\\'")
    return name


def _named_directories(directories) -> dict[str, Path]:
    if isinstance(directories, (str, os.PathLike)):
        raise ValueError("directories must be a list of LoRA folders (or a {name: folder} dict), not one path")
    if isinstance(directories, Mapping):
        named = {_check_name(name): Path(path) for name, path in directories.items()}
    else:
        paths = [Path(path) for path in directories]
        names = [path.name for path in paths]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(
                f"several LoRA folders are named {repeated}; pass a dict {{task name: folder}} to name the tasks"
            )
        named = {_check_name(name): path for name, path in zip(names, paths)}
    if not named:
        raise ValueError("directories is empty; pass at least one PEFT LoRA folder")
    return named


def _model_name(model: nn.Module) -> str | None:
    config = getattr(model, "config", None)
    return getattr(config, "_name_or_path", None) or getattr(config, "name_or_path", None) or None


def _base_key(name: str) -> str:
    """The last path component, lower-cased: ``/models/T0_3B`` and ``bigscience/T0_3B`` agree."""
    return name.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1].lower()


def _check_bases(model: nn.Module, loras: dict[str, PeftLora]) -> None:
    named = {lora.directory: lora.base_model_name_or_path for lora in loras.values() if lora.base_model_name_or_path}
    model_name = _model_name(model)
    keys = {_base_key(name) for name in named.values()}
    if len(keys) > 1:
        listing = ", ".join(f"{directory}: {name!r}" for directory, name in named.items())
        raise LoraLibraryError(
            next(iter(named)),
            f"the LoRAs were trained on different base models ({listing}); import LoRAs of one base, or pass "
            "check_base=False if these names are the same weights",
        )
    if keys and model_name and _base_key(model_name) not in keys:
        directory, name = next(iter(named.items()))
        raise LoraLibraryError(
            directory,
            f"was trained on {name!r} but the base model is {model_name!r}; load the base the LoRAs were trained "
            "on, or pass check_base=False if these names are the same weights",
        )


def _check_modules(model: nn.Module, loras: dict[str, PeftLora]) -> dict[str, tuple[int, int]]:
    """``{module: (d_in, d_out)}`` of the union of the LoRAs' modules, each checked against the base."""
    dims: dict[str, tuple[int, int]] = {}
    for lora in loras.values():
        for name, module in lora.modules.items():
            if name not in dims:
                try:
                    target = model.get_submodule(name)
                except AttributeError:
                    raise LoraLibraryError(
                        lora.directory,
                        f"adapts {name}, which {type(model).__name__} has no module of that name; it was trained on "
                        f"another base model ({lora.base_model_name_or_path or 'no base named in its config'}): "
                        "load that base",
                    ) from None
                try:
                    dims[name] = linear_dims(target)
                except TypeError:
                    raise LoraLibraryError(
                        lora.directory,
                        f"adapts {name}, a {type(target).__name__} in this base; only nn.Linear / Conv1D LoRAs import",
                    ) from None
            d_in, d_out = dims[name]
            if module.down.shape[0] != d_in or module.up.shape[1] != d_out:
                raise LoraLibraryError(
                    lora.directory,
                    f"{name}: the LoRA maps {module.down.shape[0]} -> {module.up.shape[1]} but the base layer maps "
                    f"{d_in} -> {d_out}; the LoRA was trained on another base model: load that base",
                )
    return dims


# ------------------------------------------------------------------------------------- filling


def _balanced(down: torch.Tensor, up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``A' (d_in, k)``, ``B' (k, d_out)`` with ``A' B' = A B``, ``k <= r``, both sides ``U S^1/2`` / ``S^1/2 V^T``.

    ``A = Q_A R_A``, ``B^T = Q_B R_B``, ``R_A R_B^T = U S V^T``; ``A' = Q_A U S^1/2``,
    ``B' = S^1/2 V^T Q_B^T``: columns in order of singular value, each side of norm ``sqrt(S)``.
    """
    q_down, r_down = torch.linalg.qr(down)
    q_up, r_up = torch.linalg.qr(up.T)
    left, singular, right_t = torch.linalg.svd(r_down @ r_up.T, full_matrices=False)
    root = singular.sqrt()
    return q_down @ (left * root), (root[:, None] * right_t) @ q_up.T


def _one_hot_rows(method: str, n_tasks: int, tensor_rank: int, order: int, n_heads: int) -> torch.Tensor:
    """The routing tensor of a library: task ``t`` uses only its own skill / rank block / leaf set."""
    eye = torch.eye(n_tasks, dtype=torch.float64)
    if method == "poly":
        return eye  # (L, S = L)
    if method == "mhr":
        return eye[:, None, :].expand(n_tasks, n_heads, n_tasks)  # (L, H, S)
    if method == "tensorpoly_i":
        return eye.repeat_interleave(tensor_rank, dim=1)  # (L, L R): ranks i R .. i R + R - 1
    return eye[:, None, :].expand(n_tasks, order, n_tasks)  # tensorpoly_ii: (L, N, R = L)


def _scaled_pairs(loras: list[PeftLora], name: str) -> list[tuple[torch.Tensor, torch.Tensor] | None]:
    """Per LoRA, module ``name``'s ``(A, s B)`` in float64 (its scaling folded into ``B``), or ``None`` where it has none."""
    return [None if (module := lora.modules.get(name)) is None
            else (module.down.double(), module.up.double() * module.scaling) for lora in loras]


@torch.no_grad()
def _fill_dense(layers: dict[str, AdaptedLinear], loras: list[PeftLora], rank: int) -> None:
    for name, layer in layers.items():
        down, up = stack_pairs(_scaled_pairs(loras, name), layer.d_in, layer.d_out, rank)
        layer.bank.down.copy_(down)
        layer.bank.up.copy_(up)


@torch.no_grad()
def _fill_leaves(
    layers: dict[str, AdaptedLinear],
    loras: list[PeftLora],
    *,
    rank_per_lora: int,
    order: int,
    n_iter_max: int,
    seed: int,
) -> None:
    """Each LoRA's balanced columns fitted by ``rank_per_lora`` simple tensors, in its own rank block."""
    for name, layer in layers.items():
        bank = layer.bank
        down_leaves = torch.zeros(bank.down.leaves.shape, dtype=torch.float64)  # (r, R_total, N, q_in), on the CPU
        up_leaves = torch.zeros(bank.up.leaves.shape, dtype=torch.float64)
        for index, lora in enumerate(loras):
            module = lora.modules.get(name)
            if module is None:
                continue
            a, b = _balanced(module.down.double(), module.up.double() * module.scaling)
            k = a.shape[1]
            block = slice(index * rank_per_lora, (index + 1) * rank_per_lora)
            fitted_down, _ = fit_leaves(a.T, rank_per_lora, order, n_iter_max=n_iter_max, seed=seed)
            fitted_up, _ = fit_leaves(b, rank_per_lora, order, n_iter_max=n_iter_max, seed=seed)
            down_leaves[:k, block] = fitted_down
            up_leaves[:k, block] = fitted_up
        bank.down.leaves.copy_(down_leaves / bank.down.leaf_scale)
        bank.up.leaves.copy_(up_leaves / bank.up.leaf_scale)


@torch.no_grad()
def _fill_shared(layers: dict[str, AdaptedLinear], loras: list[PeftLora], rank: int, n_skills: int, steps: int) -> None:
    """Every layer's ``n_skills`` shared Poly skills and routing rows, fitted to all the LoRAs at once."""
    for name, layer in layers.items():
        fitted = fit_shared_skills(_scaled_pairs(loras, name), n_skills, d_in=layer.d_in, d_out=layer.d_out, rank=rank, steps=steps)
        layer.bank.down.copy_(fitted.down)
        layer.bank.up.copy_(fitted.up)
        layer.combiner.logits.copy_(fitted.weights)


# ------------------------------------------------------------------------------------ measuring


def _low_rank_norm(down: torch.Tensor, up: torch.Tensor) -> float:
    """``||down @ up||_F`` from the QR factors (no squared Gram matrices: no cancellation)."""
    _, r_down = torch.linalg.qr(down)
    _, r_up = torch.linalg.qr(up.T)
    return float(torch.linalg.matrix_norm(r_down @ r_up.T))


def combined_error(task_errors: Mapping[str, float], update_norms: Mapping[str, float]) -> float:
    """One relative error over tasks: the per-task errors weighted by the squared update norms.

    Combines imports too: the errors and norms of several `LibraryImport` (one per task, as for
    ``tlora``) give the error of the whole library.
    """
    target = sum(update_norms[name] ** 2 for name in task_errors)
    difference = sum((task_errors[name] * update_norms[name]) ** 2 for name in task_errors)
    return (difference / target) ** 0.5 if target > 0 else 0.0


@torch.no_grad()
def _errors(
    model: nn.Module, loras: dict[str, PeftLora]
) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
    """Relative errors of the routed model's task updates against the LoRAs' (per layer, per task),
    and each LoRA's update norm over all layers."""
    names = list(loras)
    routed = adapter_config(model).is_routed
    layer_sums: dict[str, list[float]] = {}
    task_sums = {name: [0.0, 0.0] for name in names}
    for layer_name, layer in adapted_layers(model).items():
        sums = layer_sums.setdefault(layer_name, [0.0, 0.0])
        for task, name in enumerate(names):
            fitted_down, fitted_up = (m.double().cpu() for m in task_lora_matrices(layer, task if routed else None))
            module = loras[name].modules.get(layer_name)
            if module is None:
                down = torch.zeros(layer.d_in, 1, dtype=torch.float64)
                up = torch.zeros(1, layer.d_out, dtype=torch.float64)
            else:
                down, up = module.down.double(), module.up.double() * module.scaling
            difference = _low_rank_norm(torch.cat([down, fitted_down], 1), torch.cat([up, -fitted_up], 0)) ** 2
            target = _low_rank_norm(down, up) ** 2
            for total in (sums, task_sums[name]):
                total[0] += difference
                total[1] += target

    def ratio(pair: list[float]) -> float:
        difference, target = pair
        return (difference / target) ** 0.5 if target > 0 else difference**0.5

    return ({k: ratio(v) for k, v in layer_sums.items()}, {k: ratio(v) for k, v in task_sums.items()},
            {k: v[1] ** 0.5 for k, v in task_sums.items()})


# -------------------------------------------------------------------------------------- import


def from_lora_library(
    base_model: nn.Module,
    directories: Sequence[PathLike] | Mapping[str, PathLike],
    method: str = "poly",
    *,
    tensor_rank: int | None = None,
    order: int = 2,
    n_heads: int = 1,
    n_skills: int | None = None,
    fit_steps: int = 200,
    check_base: bool = True,
    n_iter_max: int = 500,
    seed: int = 0,
) -> LibraryImport:
    """Turn PEFT LoRA folders for one base model into one routed model: task ``i`` = LoRA ``i``.

    ``poly`` / ``mhr`` / ``lora`` are exact: ``model(**batch, task_ids=i)`` (or a mixed batch,
    ``task_ids=LongTensor``) computes what ``PeftModel`` computes with LoRA ``i``, in the base
    model's dtype (the skills are stored in it: on a bf16 base they are rounded to bf16, where
    PEFT keeps LoRA weights in float32 by default). ``tensorpoly_i`` / ``tensorpoly_ii`` /
    ``tlora`` compress by a fit and report its error per layer and per task (logged at INFO;
    ``result.summary()``). The module docstring has the table of methods.

    Args:
        base_model: the base the LoRAs were trained on; adapted in place (as `inject`).
        directories: PEFT LoRA folders (task names: the folder names) or ``{task name: folder}``.
        method: one of `EXACT_METHODS` or `COMPRESSED_METHODS`.
        tensor_rank: ``tensorpoly_i`` / ``tlora``: the tensor rank ``R`` each LoRA's columns are
            fitted with (the model's ``tensor_rank`` is ``L * R``); required there. Not read by
            the exact methods; ``tensorpoly_ii`` takes only ``None`` or 1.
        order: tensor order ``N`` of the compressed methods.
        n_heads: ``mhr``'s heads (must divide every adapted dim).
        n_skills: ``poly`` only: ``S`` skills shared by all tasks, fewer than the ``L`` LoRAs
            (``None`` or ``L``: one skill per LoRA, exact). Each layer's skills and routing rows
            are fitted to every LoRA at once, each LoRA counting the same whatever its update's
            norm (`tensoradapt.shared_skills.fit_shared_skills`), and the error is reported as for
            the other fits.
        fit_steps: L-BFGS iterations of that fit per layer (0: its truncated-SVD start alone).
        check_base: refuse LoRAs whose ``base_model_name_or_path`` differ from each other or from
            the model's (compared by last path component, case-insensitive).
        n_iter_max: CP-ALS iterations of the fit at ``order >= 3`` (tensorly).
        seed: seed of that fit.

    Returns:
        A `LibraryImport`: ``.model``, ``.names``, ``.task_id(name)``, the errors.

    Raises:
        LoraLibraryError: a folder that is not a plain PEFT LoRA, adapts a module the base lacks
            or maps other dims, or names another base; the message names the folder and the fix.
        ValueError: a bad ``method`` / ``tensor_rank`` / name, or a model that has adapters.
    """
    if method not in EXACT_METHODS + COMPRESSED_METHODS:
        raise ValueError(
            f"method={method!r} cannot hold a LoRA library; choose one of {EXACT_METHODS} (exact) or "
            f"{COMPRESSED_METHODS} (fitted; T-REX's token-routed rank-one experts are not a set of LoRAs)"
        )
    if getattr(base_model, _CONFIG_ATTR, None) is not None:
        raise ValueError(
            f"{type(base_model).__name__} already has tensoradapt adapters; import a library into a bare base model"
        )
    named = _named_directories(directories)
    loras = {name: read_peft_lora(path) for name, path in named.items()}
    n_loras = len(loras)
    if method in ("lora", "tlora") and n_loras != 1:
        raise ValueError(
            f"method={method!r} has no task routing, so it holds one LoRA, got {n_loras}; import a library with "
            "method='poly' (exact) or 'tensorpoly_i' (fitted)"
        )
    if method in ("tlora", "tensorpoly_i"):
        if tensor_rank is None:
            raise ValueError(f"method={method!r} fits each LoRA with tensor_rank simple tensors: pass tensor_rank=R")
        check_positive("tensor_rank", tensor_rank)
        rank_per_lora = tensor_rank
    elif method == "tensorpoly_ii":
        if tensor_rank not in (None, 1):
            raise ValueError(
                f"tensor_rank={tensor_rank!r}: a TensorPoly-II task's adapter is one product of mixed leaves per "
                "column (tensor rank 1 whatever R), so each LoRA gets one leaf set; pass tensor_rank=None, or use "
                "method='tensorpoly_i' for rank-R fits"
            )
        rank_per_lora = 1
    else:
        rank_per_lora = 1
    if n_skills is not None:
        if method != "poly":
            raise ValueError(f"n_skills={n_skills!r} shares skills across LoRAs for method='poly' only, got "
                             f"method={method!r}; pass n_skills=None, or method='poly'")
        check_positive("n_skills", n_skills)
        if n_skills > n_loras:
            raise ValueError(f"n_skills={n_skills} is more skills than the {n_loras} LoRAs; at n_skills={n_loras} "
                             "(or None) each LoRA is its own skill, exactly")
    if isinstance(fit_steps, bool) or not isinstance(fit_steps, int) or fit_steps < 0:
        raise ValueError(f"fit_steps must be an integer >= 0 (L-BFGS iterations per layer), got {fit_steps!r}")
    shared = n_skills is not None and n_skills < n_loras
    if check_base:
        _check_bases(base_model, loras)
    dims = _check_modules(base_model, loras)
    rank = max(lora.max_rank for lora in loras.values())
    pattern = "(?:" + "|".join(re.escape(name) for name in sorted(dims)) + ")"
    config = AdapterConfig(
        method=method,
        target_modules=pattern,
        n_tasks=1 if method in ("lora", "tlora") else n_loras,
        n_skills=n_skills if shared else n_loras,
        n_heads=n_heads,
        lora_rank=rank,
        lora_alpha=float(rank),  # scaling 1: each LoRA's own scaling is folded into its B
        tensor_rank=rank_per_lora * (1 if method == "tlora" else n_loras),
        order=order,
        routing_normalization="identity",
        routing_noise="none",
    )
    ordered = list(loras.values())

    def prepare(layers: dict[str, AdaptedLinear]) -> None:
        if shared:
            _fill_shared(layers, ordered, rank, n_skills, fit_steps)
            return
        if method in EXACT_METHODS:
            _fill_dense(layers, ordered, rank)
        else:
            _fill_leaves(layers, ordered, rank_per_lora=rank_per_lora, order=order, n_iter_max=n_iter_max, seed=seed)
        if config.is_routed:
            rows = _one_hot_rows(method, n_loras, rank_per_lora, order, n_heads)
            with torch.no_grad():
                for layer in layers.values():
                    layer.combiner.logits.copy_(rows)

    model = _inject(base_model, config, prepare)
    layer_errors, task_errors, update_norms = _errors(model, loras)
    result = LibraryImport(
        model=model,
        names=list(loras),
        method=method,
        exact=method in EXACT_METHODS and not shared,
        ranks={name: lora.max_rank for name, lora in loras.items()},
        layer_errors=layer_errors,
        task_errors=task_errors,
        update_norms=update_norms,
    )
    logger.info(
        "imported %d LoRAs as %s on %d modules (rank %d): relative error max %.3g over layers",
        n_loras, method, len(dims), rank, result.max_layer_error,
    )
    logger.debug("%s", result.summary())
    return result


# -------------------------------------------------------------------------------------- export


def export_lora_library(
    model: nn.Module,
    directory: PathLike,
    names: Sequence[str] | None = None,
    *,
    inputs: Mapping | Iterable[Mapping] | None = None,
    base_model_name_or_path: str | None = None,
) -> LibraryExport:
    """Write every task of ``model`` as its own PEFT LoRA folder, ``<directory>/<name>``.

    Each folder is `export_peft_lora`'s (``trim_zero_rank=True``): ``PeftModel.from_pretrained``
    / ``load_adapter`` load it, and vLLM-style multi-LoRA servers serve it. A routed model writes
    one folder per task; an unrouted one (LoRA, TLoRA) one folder. ``<directory>/library.json``
    lists ``{"method", "exact", "tasks": [{"name", "task_id", "path", "r", "n_modules"}]}``
    (T-REX: ``"export_error"`` too). The module docstring gives each method's rank.

    Args:
        model: a model with adapters (`inject`, `from_pretrained`, `from_lora_library`).
        directory: the library folder (created; existing task folders are overwritten).
        names: one folder name per task, in task-id order; ``task_<id>`` by default (a
            `LibraryImport`'s ``names`` round-trip an imported library).
        inputs: T-REX only: one forward kwargs mapping or several, on which the routing-averaged
            export's error is measured per task (`tensoradapt.trex.trex_export_error`). Without
            them the error is not measured (a warning is logged).
        base_model_name_or_path: written into every ``adapter_config.json``.

    Returns:
        A `LibraryExport`.
    """
    config = adapter_config(model)
    token_routed = any(layer.combiner.token_routed for layer in adapted_layers(model).values())
    task_routed = config.is_routed or token_routed
    n_tasks = config.n_tasks if task_routed else 1
    names = [f"task_{task}" for task in range(n_tasks)] if names is None else list(names)
    if len(names) != n_tasks:
        raise ValueError(
            f"names has {len(names)} entries but the model has {n_tasks} task(s) to export; give one per task"
        )
    for name in names:
        _check_name(name)
    if len(set(names)) != len(names):
        raise ValueError(f"names must be distinct, got {names}")
    directory = Path(directory)
    errors: dict[str, dict] | None = None
    if token_routed:
        if inputs is None:
            logger.warning(
                "T-REX exports its routing-averaged LoRA, an approximation; pass inputs=... to measure its error"
            )
        else:
            from tensoradapt.trex import trex_export_error

            inputs = [dict(inputs)] if isinstance(inputs, Mapping) else [dict(call) for call in inputs]
            errors = {name: trex_export_error(model, inputs, task) for task, name in enumerate(names)}
    paths: dict[str, Path] = {}
    ranks: dict[str, int] = {}
    entries = []
    for task, name in enumerate(names):
        path = export_peft_lora(
            model, directory / name, task if task_routed else None,
            base_model_name_or_path=base_model_name_or_path, trim_zero_rank=True,
        )
        written = json.loads((path / "adapter_config.json").read_text())
        paths[name], ranks[name] = path, written["r"]
        entry = {"name": name, "task_id": task, "path": name, "r": written["r"],
                 "n_modules": len(written["target_modules"])}
        if errors is not None:
            entry["export_error"] = errors[name]
        entries.append(entry)
    index = {"method": config.method, "exact": not token_routed, "tasks": entries}
    text = json.dumps(index, indent=2) + "\n"
    atomic_write(directory / LIBRARY_INDEX, lambda tmp: Path(tmp).write_text(text))
    logger.info("exported %d task LoRAs of %s to %s", len(names), config.method, directory)
    return LibraryExport(directory, paths, ranks, exact=not token_routed, errors=errors)
