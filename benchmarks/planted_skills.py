"""Do routed adapters find reusable skills? A multi-task transfer benchmark with planted ground truth.

The project generates everything (no download): a small frozen MLP, latent skills planted as
weight deltas on its two hidden linears, training tasks that each use a known subset of the
skills, and held-out tasks that combine the same skills in new ways (see
``benchmarks/planted/world.py``). Three worlds plant the structure that Poly (dense low-rank
skills), TensorPoly (Kronecker-product skills) and T-REX (rank-one pairs) assume.

Every method goes through the library's public API exactly as a user would:

1. ``tensoradapt.inject(backbone, AdapterConfig(method=..., target_modules="fc[12]", n_tasks=T))``;
2. multi-task training on the training tasks, ``model(x, task_ids=...)`` (Adam, cosine decay,
   routing logits on their own learning rate as in the paper);
3. few-shot adaptation on every held-out task from ``shots`` examples, a fresh copy per task:
   ``reset_routing(model, 1)`` then ``set_training_mode(model, mode)`` with ``routing_only``
   (the paper's z), ``modules_only`` (mu: skills averaged, no routing) and ``full``; LoRA and
   TLoRA train their one adapter (``full``). Same examples, steps and learning rates for all;
   the last step is evaluated (no checkpoint selection).

T-REX routes every input by itself and takes the task level through its semantic prior, as in a
task-id pipeline: the training tasks' mean inputs are clustered (``fit_centroids``, one centroid
per training task) and each task's prior row is the cosine of its mean input to the centroids
(``set_task_prior``); a held-out task's row comes from the mean of its shots
(``set_task_prior(..., new_tasks=True)``). Inputs stand in for sentence embeddings here.

Reported: the held-out relative error ``sum ||f(x) - y||^2 / sum ||backbone(x) - y||^2`` on
fresh inputs of each held-out task (1 = no better than the frozen backbone, 0 = the planted
function), the parameters each phase trains, and how well each router recovered the planted
task-skill allocation against a random-routing baseline (``benchmarks/planted/recovery.py``).
Then the T0-3B parameter table (``benchmarks/param_table.py``) when that script is present::

    python benchmarks/planted_skills.py --output-dir benchmarks/results/demo
    python benchmarks/planted_skills.py --quick --output-dir /tmp/demo     # seconds, for smoke tests
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))

import tensoradapt  # noqa: E402
from planted.recovery import MATCHER, recovery_score, routing_slices, shuffled_scores  # noqa: E402
from planted.report import markdown_report, plot_results, plot_routing  # noqa: E402
from planted.world import WORLDS, World, WorldSpec, make_world  # noqa: E402
from tensoradapt import AdapterConfig  # noqa: E402
from tensoradapt.routing.semantic_prior import centroid_similarity, fit_centroids  # noqa: E402
from tensoradapt.trex import set_task_prior  # noqa: E402

HERE = Path(__file__).resolve().parent
DEFAULT_OUTPUT = HERE / "results" / "demo"
MODES = ("routing_only", "modules_only", "full")
MODE_LABELS = {"routing_only": "z (routing only)", "modules_only": "mu (modules only)", "full": "full"}
#: Methods in the order they are reported; ``lora_scratch`` is LoRA without multi-task training.
METHOD_ORDER = ("lora_scratch", "lora", "tlora", "poly", "mhr", "tensorpoly_i", "tensorpoly_ii", "trex")
METHOD_LABELS = {"lora_scratch": "LoRA, no multi-task", **tensoradapt.METHOD_LABELS}


@dataclass(frozen=True)
class RunSpec:
    """Everything a run depends on besides the seed (the world's sizes and the training recipe)."""

    world: WorldSpec = WorldSpec()
    pretrain_steps: int = 1500
    batch_per_task: int = 16
    pretrain_lr: float = 1e-2
    routing_lr: float = 1e-1
    fewshot_steps: int = 150
    fewshot_lr: float = 3e-3
    fewshot_routing_lr: float = 1e-1
    routing_noise: str = "relaxed_bernoulli"
    mhr_heads: int = 4
    shuffles: int = 200


FULL = RunSpec()
QUICK = RunSpec(
    world=WorldSpec(
        dim=16, out_dim=4, n_skills=4, skill_rank=1, pair_down=2, pair_up=2, n_train_tasks=6, n_heldout_tasks=2,
        train_examples=32, eval_examples=32, shots=8,
    ),
    pretrain_steps=30,
    batch_per_task=8,
    fewshot_steps=8,
    mhr_heads=2,
    shuffles=20,
)


def method_configs(run: RunSpec, n_tasks: int) -> dict[str, AdapterConfig]:
    """One config per method, the same for every world: rank ``r`` skills, ``K`` experts each.

    Routed methods get as many experts as the world plants (``K = n_skills``); TLoRA is the
    TensorPoly bank without routing; T-REX pairs ``pair_down`` down with ``pair_up`` up vectors.
    """
    spec = run.world
    common = dict(target_modules=r"fc[12]", lora_rank=spec.skill_rank, routing_noise=run.routing_noise)
    routed = dict(common, n_tasks=n_tasks)
    configs = {
        "lora_scratch": AdapterConfig(method="lora", **common),
        "lora": AdapterConfig(method="lora", **common),
        "tlora": AdapterConfig(method="tlora", tensor_rank=spec.n_skills, order=2, **common),
        "poly": AdapterConfig(method="poly", n_skills=spec.n_skills, **routed),
        "mhr": AdapterConfig(method="mhr", n_skills=spec.n_skills, n_heads=run.mhr_heads, **routed),
        "tensorpoly_i": AdapterConfig(method="tensorpoly_i", tensor_rank=spec.n_skills, order=2, **routed),
        "tensorpoly_ii": AdapterConfig(method="tensorpoly_ii", tensor_rank=spec.n_skills, order=2, **routed),
        "trex": AdapterConfig(
            method="trex", trex_down=spec.pair_down, trex_up=spec.pair_up, trex_n_clusters=n_tasks, **routed
        ),
    }
    return configs


def call_kwargs(config: AdapterConfig, task_ids) -> dict:
    """Routing inputs of one call: task ids for task-routed methods and T-REX (its task prior rows)."""
    return {"task_ids": task_ids} if config.is_routed or config.method == "trex" else {}


def trex_centroids(world: World, config: AdapterConfig, seed: int) -> torch.Tensor:
    """``(k, d)`` k-means centroids of the training tasks' mean inputs (T-REX's semantic clusters)."""
    task_means = world.data["train"][0].mean(1)  # (tasks, d)
    return fit_centroids(task_means, config.trex_n_clusters, seed, use_cache=False)


def trex_prior_rows(x_by_task: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """``(tasks, k)``: cosine of every task's mean input ``x_by_task (tasks, n, d)`` to the centroids."""
    return centroid_similarity(x_by_task.mean(1), centroids)


def optimizer(model, modules_lr: float, routing_lr: float) -> torch.optim.Optimizer:
    """Adam over the trainable adapter parameters, routing logits on their own learning rate."""
    groups = tensoradapt.parameter_groups(model)
    param_groups = [
        {"params": [p for p in groups["modules"] if p.requires_grad], "lr": modules_lr},
        {"params": [p for p in groups["routing"] if p.requires_grad], "lr": routing_lr},
    ]
    return torch.optim.Adam([group for group in param_groups if group["params"]])


def pretrain(model, world: World, config: AdapterConfig, run: RunSpec, generator: torch.Generator) -> None:
    """Multi-task training: every step draws ``batch_per_task`` examples of every training task."""
    x_all, y_all = world.data["train"]
    n_tasks, n_examples = x_all.shape[:2]
    rows = torch.arange(n_tasks).unsqueeze(1)
    task_ids = torch.arange(n_tasks).repeat_interleave(run.batch_per_task)
    opt = optimizer(model, run.pretrain_lr, run.routing_lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: 0.5 * (1 + math.cos(math.pi * step / run.pretrain_steps))
    )
    model.train()
    for _ in range(run.pretrain_steps):
        index = torch.randint(n_examples, (n_tasks, run.batch_per_task), generator=generator)
        x, y = x_all[rows, index].flatten(0, 1), y_all[rows, index].flatten(0, 1)
        loss = F.mse_loss(model(x, **call_kwargs(config, task_ids)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.step()
    model.eval()


@torch.no_grad()
def relative_errors(model, world: World, x_all, y_all, config: AdapterConfig, task_ids) -> list[float]:
    """Per task ``i``: ``sum ||f(x) - y||^2 / sum ||backbone(x) - y||^2`` over ``x_all[i]`` (routed as
    ``task_ids[i]``)."""
    errors = []
    for i, task in enumerate(task_ids):
        x, y = x_all[i], y_all[i]
        prediction = model(x, **call_kwargs(config, task))
        errors.append(float((prediction - y).pow(2).sum() / (world.backbone(x) - y).pow(2).sum()))
    return errors


def adapt(
    pretrained, world: World, config: AdapterConfig, run: RunSpec, mode: str, seed: int,
    centroids: torch.Tensor | None = None,
) -> dict:
    """Few-shot adaptation of a fresh copy per held-out task; errors on fresh inputs, last step.

    ``centroids``: T-REX's, to give each held-out task the prior row of its shots.
    """
    x_shots, y_shots = world.data["shots"]
    errors, trainable = [], None
    for i in range(world.n_heldout):
        torch.manual_seed(seed + i)
        model = copy.deepcopy(pretrained)
        if config.is_routed:
            tensoradapt.reset_routing(model, 1)
        if centroids is not None:
            set_task_prior(model, trex_prior_rows(x_shots[i : i + 1], centroids), new_tasks=True)
        parameters = tensoradapt.set_training_mode(model, mode)
        trainable = sum(p.numel() for p in parameters)
        opt = optimizer(model, run.fewshot_lr, run.fewshot_routing_lr)
        model.train()
        for _ in range(run.fewshot_steps):
            loss = F.mse_loss(model(x_shots[i], **call_kwargs(config, 0)), y_shots[i])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        x_eval, y_eval = world.data["heldout_eval"]
        errors += relative_errors(model, world, x_eval[i : i + 1], y_eval[i : i + 1], config, [0])
    return dict(error=_mean(errors), per_task=errors, trainable=trainable)


@torch.no_grad()
def routing_weights(model, n_tasks: int) -> dict[str, torch.Tensor]:
    """Per adapted layer, the eval-mode (sigmoid, normalised) weights ``(n_tasks, *route_shape)``."""
    weights = {}
    for name, layer in tensoradapt.adapted_layers(model).items():
        combiner = layer.combiner
        was_training = combiner.training
        combiner.eval()
        weights[name] = combiner.weights(torch.arange(n_tasks)).float()
        combiner.train(was_training)
    return weights


def recovery(world: World, weights: dict[str, torch.Tensor], run: RunSpec, seed: int) -> dict:
    """Router recovery of the planted allocation (mean over layers and slices) and its chance level."""
    planted = world.allocation[: world.n_train]
    generator = torch.Generator().manual_seed(seed)
    per_layer, chance, example = {}, [], None
    for name, layer_weights in weights.items():
        scores = []
        for index, learned in enumerate(routing_slices(layer_weights)):
            score, pairs = recovery_score(planted, learned)
            scores.append(score)
            chance.append(shuffled_scores(planted, learned, n=run.shuffles, generator=generator))
            if example is None:
                example = dict(layer=name, slice=index, learned=learned.tolist(), pairs=pairs, score=score)
        per_layer[name] = sum(scores) / len(scores)
    chance_scores = torch.stack(chance).mean(0)  # a method's chance score per shuffle, averaged over slices
    return dict(
        score=sum(per_layer.values()) / len(per_layer),
        per_layer=per_layer,
        chance=float(chance_scores.mean()),
        chance_p95=float(chance_scores.quantile(0.95)),
        example=example,
    )


def run_world(world: World, run: RunSpec, seed: int, *, bar: tqdm) -> dict:
    """All methods on one world: multi-task training, recovery, few-shot adaptation per mode."""
    configs = method_configs(run, world.n_train)
    results = {}
    for offset, (name, config) in enumerate(configs.items()):
        bar.set_postfix_str(f"{world.kind}: {METHOD_LABELS[name]}")
        start = time.perf_counter()
        torch.manual_seed(seed * 7919 + offset)
        model = tensoradapt.inject(copy.deepcopy(world.backbone), config)
        centroids = trex_centroids(world, config, seed) if config.method == "trex" else None
        if centroids is not None:
            set_task_prior(model, trex_prior_rows(world.data["train"][0], centroids))
        counts = tensoradapt.count_parameters(model)
        entry = dict(config=config.to_dict(), multitask_parameters=counts["adapter"], recovery=None)
        if name != "lora_scratch":
            pretrain(model, world, config, run, torch.Generator().manual_seed(seed * 7919 + offset))
            entry["train_error"] = _mean(
                relative_errors(model, world, *world.data["train_eval"], config, list(range(world.n_train)))
            )
            if config.is_routed:
                entry["recovery"] = recovery(world, routing_weights(model, world.n_train), run, seed + offset)
        else:
            entry["multitask_parameters"] = 0
            entry["train_error"] = None
        modes = MODES if config.is_routed else ("full",)
        entry["fewshot"] = {
            mode: adapt(model, world, config, run, mode, seed * 104729 + offset, centroids) for mode in modes
        }
        entry["seconds"] = time.perf_counter() - start
        results[name] = entry
        bar.update(1)
    return results


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def environment() -> dict:
    """What the run happened on."""
    return dict(
        python=platform.python_version(),
        torch=torch.__version__,
        platform=platform.platform(),
        threads=torch.get_num_threads(),
        matcher=MATCHER,
    )


def param_table_lines() -> list[str]:
    """The T0-3B parameter table of ``benchmarks/param_table.py`` as markdown lines."""
    import param_table

    return param_table.markdown(param_table.build_table()).splitlines()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", type=Path, default=DEFAULT_OUTPUT, help="where the JSON, markdown and PNGs go")
    parser.add_argument("--seed", type=int, default=0, help="seed of the worlds, the inits and the batches")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test of a few seconds)")
    parser.add_argument("--worlds", nargs="+", default=list(WORLDS), choices=WORLDS, help="which planted worlds")
    parser.add_argument("--no-param-table", action="store_true", help="skip the T0-3B parameter table at the end")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: the models are tiny, and more threads only spin-wait on a busy CPU)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    run = QUICK if args.quick else FULL
    started = time.perf_counter()
    n_methods = len(method_configs(run, 1))
    worlds, results = {}, {}
    with tqdm(total=len(args.worlds) * n_methods, desc="planted skills", unit="method", file=sys.stderr) as bar:
        for kind in args.worlds:
            world = make_world(kind, run.world, args.seed)
            worlds[kind] = world
            results[kind] = dict(
                n_experts=run.world.n_experts(kind),
                allocation_train=world.allocation[: world.n_train].tolist(),
                allocation_heldout=world.allocation[world.n_train :].tolist(),
                methods=run_world(world, run, args.seed, bar=bar),
            )
    timing = dict(wall_s=time.perf_counter() - started)
    output = dict(
        benchmark="planted_skills",
        seed=args.seed,
        quick=args.quick,
        settings=dataclasses.asdict(run),
        matcher=MATCHER,
        worlds=results,
        environment=environment(),
        timing=timing,
    )
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "planted_skills.json").write_text(json.dumps(output, indent=1) + "\n")
    report = markdown_report(output, METHOD_ORDER, METHOD_LABELS, MODES, MODE_LABELS)
    (args.output_dir / "planted_skills.md").write_text(report + "\n")
    plot_results(output, METHOD_ORDER, METHOD_LABELS, MODES, MODE_LABELS, args.output_dir / "results.png")
    for kind, world in worlds.items():
        plot_routing(output, world, METHOD_ORDER, METHOD_LABELS, args.output_dir / f"routing_{kind}.png")
    print(report)
    print(f"\nwrote {args.output_dir}/planted_skills.json, planted_skills.md, results.png, routing_*.png "
          f"in {timing['wall_s']:.0f} s")
    if not args.no_param_table:
        print("\nT0-3B parameter table (benchmarks/param_table.py):")
        print("\n".join(param_table_lines()))
    return output


if __name__ == "__main__":
    main()
