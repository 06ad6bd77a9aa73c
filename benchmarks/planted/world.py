"""A multi-task world whose skills are planted, so that what a router learns can be checked.

A small frozen backbone (``fc1``, ``fc2``: ``d -> d`` with tanh, then a ``head``: ``d -> d_out``)
is random but seeded. A *skill* is a set of weight deltas on ``fc1`` and ``fc2``; a *task* uses a
known subset of the skills (the task-skill allocation matrix, rows summing to 1) and its target
function is the backbone with the task's delta added to each adapted layer:

    y_t(x) = head(tanh(fc2'(tanh(fc1'(x)))))   with   fc'(h) = fc(h) + h @ Delta_t   (Delta_t: d_in x d_out)

Three kinds of world, each planting the structure one family of methods assumes (``w`` is the
task's allocation row, ``K`` skills):

* ``poly``: dense low-rank skills ``A_k (d x r)``, ``B_k (r x d)`` mixed the way Poly mixes them,
  ``Delta_t = (sum_k w_k A_k) (sum_k w_k B_k)`` (rank <= r).
* ``tensor``: the same mixture, but every column of every ``A_k`` and every row of every ``B_k``
  is a Kronecker product of two leaves of size ``q = ceil(sqrt(d))`` (cut to ``d``): the
  skills are the simple tensors TensorPoly-I routes.
* ``rank_one``: ``r1`` down vectors ``a_i`` and ``r2`` up vectors ``b_j``; every pair ``(i, j)``
  is a rank-one expert ``a_i b_j^T`` (T-REX's mix and match, ``K = r1 r2`` experts from
  ``r1 + r2`` vectors) and ``Delta_t = sum_(i,j) w_ij a_i b_j^T``.

Training tasks and held-out tasks use different subsets of the same skills (new combinations).
Each task's inputs are ``x = z + s_t`` with ``z ~ N(0, I)`` and a task signature ``s_t`` of
fixed norm, so a router that only sees inputs (T-REX) can tell tasks apart as well.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from tensoradapt import leaf_size

__all__ = ["ADAPTED_LAYERS", "WORLDS", "Backbone", "World", "WorldSpec", "kron_columns", "make_world"]

WORLDS: tuple[str, ...] = ("poly", "tensor", "rank_one")
ADAPTED_LAYERS: tuple[str, ...] = ("fc1", "fc2")


@dataclass(frozen=True)
class WorldSpec:
    """Sizes of a planted world (the same for every kind; ``pair_down * pair_up`` should equal
    ``n_skills`` so every world plants ``K = n_skills`` experts)."""

    dim: int = 64
    out_dim: int = 16
    n_skills: int = 8
    skill_rank: int = 2
    pair_down: int = 4
    pair_up: int = 2
    skills_per_task: tuple[int, ...] = (2, 3)
    n_train_tasks: int = 32
    n_heldout_tasks: int = 8
    train_examples: int = 256
    eval_examples: int = 256
    shots: int = 16
    delta_scale: float = 0.5
    signature_norm: float = 2.0
    backbone_gain: float = 1.5

    def n_experts(self, kind: str) -> int:
        """Planted experts ``K`` of a world kind (the columns of its allocation matrix)."""
        return self.pair_down * self.pair_up if kind == "rank_one" else self.n_skills


class Backbone(nn.Module):
    """The frozen base model: ``x (b, d) -> head(tanh(fc2(tanh(fc1(x))))) (b, d_out)``.

    ``deltas`` (data generation only) adds ``h @ Delta`` to ``fc1`` / ``fc2``, one ``(d, d)``
    delta per example: ``{"fc1": (b, d, d), "fc2": (b, d, d)}``.
    """

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, dim)
        self.fc2 = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, out_dim)

    def forward(self, x: torch.Tensor, deltas: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        h = x
        for name in ADAPTED_LAYERS:
            out = getattr(self, name)(h)
            if deltas is not None:
                out = out + torch.bmm(h.unsqueeze(1), deltas[name]).squeeze(1)
            h = torch.tanh(out)
        return self.head(h)


def kron_columns(leaves: torch.Tensor, dim: int) -> torch.Tensor:
    """``(..., 2, q) -> (..., dim)``: the Kronecker product of the two leaves, cut to ``dim``."""
    left, right = leaves[..., 0, :], leaves[..., 1, :]
    product = left.unsqueeze(-1) * right.unsqueeze(-2)
    return product.flatten(-2)[..., :dim]


@dataclass
class World:
    """One planted world: backbone, skills, allocation, task deltas and the data of every task.

    Task ids ``0 .. n_train - 1`` are the training tasks, the next ``n_heldout`` the held-out ones.

    Attributes:
        allocation: ``(n_tasks, K)``, row ``t`` the weights of the skills task ``t`` uses (sum 1).
        skills: per adapted layer, the planted parameters (``poly``: ``down (K, d, r)``,
            ``up (K, r, d)``; ``tensor``: the same plus ``down_leaves``, ``up_leaves``
            ``(K, r, 2, q)``; ``rank_one``: ``down (r1, d)``, ``up (r2, d)``).
        deltas: per adapted layer, ``(n_tasks, d, d)``.
        train / train_eval / shots / heldout_eval: ``(x, y)`` with ``x (tasks, n, d)``,
            ``y (tasks, n, d_out)``; ``train`` and ``train_eval`` for the training tasks,
            ``shots`` (the few-shot examples) and ``heldout_eval`` for the held-out tasks.
    """

    kind: str
    spec: WorldSpec
    backbone: Backbone
    allocation: torch.Tensor
    skills: dict[str, dict[str, torch.Tensor]]
    deltas: dict[str, torch.Tensor]
    signatures: torch.Tensor
    data: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    @property
    def n_train(self) -> int:
        return self.spec.n_train_tasks

    @property
    def n_heldout(self) -> int:
        return self.spec.n_heldout_tasks

    def skill_labels(self) -> list[str]:
        """Column labels of the allocation: ``s0 ..`` or, for rank-one pairs, ``a0b1 ..``."""
        if self.kind == "rank_one":
            return [f"a{i}b{j}" for i in range(self.spec.pair_down) for j in range(self.spec.pair_up)]
        return [f"s{k}" for k in range(self.spec.n_skills)]

    @torch.no_grad()
    def targets(self, x: torch.Tensor, task: int) -> torch.Tensor:
        """``y_t(x)`` for inputs ``x (n, d)`` of task ``task``."""
        deltas = {name: self.deltas[name][task].expand(x.shape[0], -1, -1) for name in ADAPTED_LAYERS}
        return self.backbone(x, deltas)


def _allocation(spec: WorldSpec, n_experts: int, generator: torch.Generator) -> torch.Tensor:
    """Distinct skill subsets, the first ``n_train`` for training (every skill used at least twice)."""
    subsets = [s for m in spec.skills_per_task for s in itertools.combinations(range(n_experts), m)]
    n_tasks = spec.n_train_tasks + spec.n_heldout_tasks
    if len(subsets) < n_tasks:
        raise ValueError(
            f"only {len(subsets)} distinct skill subsets of sizes {spec.skills_per_task} from {n_experts} skills, "
            f"but {n_tasks} tasks are asked for"
        )
    for _ in range(1000):
        order = torch.randperm(len(subsets), generator=generator).tolist()
        chosen = [subsets[i] for i in order[:n_tasks]]
        uses = torch.zeros(n_experts)
        for subset in chosen[: spec.n_train_tasks]:
            uses[list(subset)] += 1
        if uses.min() >= 2:
            break
    else:  # pragma: no cover - only for tiny, badly chosen sizes
        raise ValueError("could not draw training tasks that use every skill at least twice; add training tasks")
    allocation = torch.zeros(n_tasks, n_experts)
    for task, subset in enumerate(chosen):
        allocation[task, list(subset)] = 1.0 / len(subset)
    return allocation


def _layer_skills(kind: str, spec: WorldSpec, generator: torch.Generator) -> dict[str, torch.Tensor]:
    d, r, k = spec.dim, spec.skill_rank, spec.n_skills
    if kind == "poly":
        return dict(
            down=torch.randn(k, d, r, generator=generator) / math.sqrt(d),
            up=torch.randn(k, r, d, generator=generator),
        )
    if kind == "tensor":
        q = leaf_size(d, 2)
        down_leaves = torch.randn(k, r, 2, q, generator=generator) / math.sqrt(q)
        up_leaves = torch.randn(k, r, 2, q, generator=generator)
        return dict(
            down=kron_columns(down_leaves, d).transpose(1, 2),  # (K, d, r): column c = leaf0 (x) leaf1
            up=kron_columns(up_leaves, d),  # (K, r, d): row c = leaf0 (x) leaf1
            down_leaves=down_leaves,
            up_leaves=up_leaves,
        )
    if kind == "rank_one":
        return dict(
            down=torch.randn(spec.pair_down, d, generator=generator) / math.sqrt(d),
            up=torch.randn(spec.pair_up, d, generator=generator),
        )
    raise ValueError(f"world kind {kind!r} is unknown; choose one of {WORLDS}")


def task_deltas(kind: str, skills: dict[str, torch.Tensor], allocation: torch.Tensor, pair_up: int) -> torch.Tensor:
    """``(n_tasks, d, d)``: every task's planted delta on one layer (see the module docstring)."""
    if kind == "rank_one":
        down, up = skills["down"], skills["up"]
        weights = allocation.reshape(-1, down.shape[0], pair_up)  # expert k = (i, j), k = i * r2 + j
        return torch.einsum("tij,id,jo->tdo", weights, down, up)
    mixed_down = torch.einsum("tk,kdr->tdr", allocation, skills["down"])
    mixed_up = torch.einsum("tk,kro->tro", allocation, skills["up"])
    return mixed_down @ mixed_up


@torch.no_grad()
def make_world(kind: str, spec: WorldSpec, seed: int) -> World:
    """Draw a world of ``kind`` (one of `WORLDS`); everything follows from ``seed``."""
    if kind not in WORLDS:
        raise ValueError(f"world kind {kind!r} is unknown; choose one of {WORLDS}")
    generator = torch.Generator().manual_seed(seed * 1009 + WORLDS.index(kind))
    backbone = Backbone(spec.dim, spec.out_dim)
    for name in ADAPTED_LAYERS:
        layer = getattr(backbone, name)
        layer.weight.copy_(torch.randn(spec.dim, spec.dim, generator=generator) * spec.backbone_gain / math.sqrt(spec.dim))
        layer.bias.copy_(torch.randn(spec.dim, generator=generator) * 0.1)
    backbone.head.weight.copy_(torch.randn(spec.out_dim, spec.dim, generator=generator) / math.sqrt(spec.dim))
    backbone.head.bias.zero_()
    backbone.requires_grad_(False).eval()

    n_experts = spec.n_experts(kind)
    allocation = _allocation(spec, n_experts, generator)
    skills, deltas = {}, {}
    for name in ADAPTED_LAYERS:
        layer_skills = _layer_skills(kind, spec, generator)
        raw = task_deltas(kind, layer_skills, allocation, spec.pair_up)
        # One scale per layer, on the up side (keeps the planted structure exact): mean ||Delta_t||_F
        # over tasks = delta_scale * ||W||_F.
        scale = spec.delta_scale * getattr(backbone, name).weight.norm() / raw.flatten(1).norm(dim=1).mean()
        layer_skills["up"] = layer_skills["up"] * scale
        if "up_leaves" in layer_skills:
            layer_skills["up_leaves"] = layer_skills["up_leaves"] * scale.sqrt()
        skills[name] = layer_skills
        deltas[name] = raw * scale

    n_tasks = spec.n_train_tasks + spec.n_heldout_tasks
    signatures = torch.randn(n_tasks, spec.dim, generator=generator)
    signatures = spec.signature_norm * signatures / signatures.norm(dim=1, keepdim=True)
    world = World(kind, spec, backbone, allocation, skills, deltas, signatures)

    def draw(tasks: range, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(len(tasks), n, spec.dim, generator=generator) + signatures[list(tasks)].unsqueeze(1)
        y = torch.stack([world.targets(x[i], task) for i, task in enumerate(tasks)])
        return x, y

    train_tasks = range(spec.n_train_tasks)
    heldout_tasks = range(spec.n_train_tasks, n_tasks)
    world.data = dict(
        train=draw(train_tasks, spec.train_examples),
        train_eval=draw(train_tasks, spec.eval_examples),
        shots=draw(heldout_tasks, spec.shots),
        heldout_eval=draw(heldout_tasks, spec.eval_examples),
    )
    return world
