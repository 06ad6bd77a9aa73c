"""Do the TLoRA-based methods learn at LoRA's pace? The library's defaults against the previous ones.

Measured per method and tensor order, for the previous defaults (``old``: the TensorPoly
reference code's leaf init ``uniform(+-gain / sqrt(d_in))``, sum-normalised routing weights,
relaxed-Bernoulli routing noise; T-REX scaled by ``lora_alpha / lora_rank``) and the library's
defaults (``new``: `AdapterConfig()`), at the sizes of the issue (LoRA rank 8, tensor rank R 8,
orders N 2 and 4, 8 skills):

1. **Init scale** (no model): the standard deviation of the task's ``A`` and ``B`` at uniform
   routing, and how far Adam's first step (``lr * sign(grad)``) moves ``B``, as a share of how
   far it moves LoRA's ``B`` (``lr`` per entry), for MiniLM's width (384) and T0-3B's (2048).
2. **Isolated layer**: one adapted ``Linear(384, 384)`` fitting a rank-8 target whose columns are
   order-N simple tensors (every method can represent it), 300 Adam steps at lr 1e-3 on random
   inputs with a loss scaled like a real model's (LoRA's first ``B`` gradient about 1e-6):
   relative error ``||delta - target|| / ||target||``.
3. **Real model, 32 shots** (when the data folder exists): all-MiniLM-L6-v2 as a cross-encoder
   scorer (``t0_recipes.scoring.cross_encoder``: (text, choice) -> mean-pooled -> frozen linear
   head), adapters on every BERT linear, trained alone with AdamW at one learning rate for every
   trained parameter (``--lr``, the few-shot rate of ``docs/training_dynamics.md``) on 32 rows
   drawn with ``--seed``, evaluated on 400 other rows (the last step, no selection). Tasks:
   sentiment (``t0_train/sst2``, choices negative / positive) and 4-way topic
   (``t0_train/ag_news``: World / Sports / Business / Science and technology). Reported: the
   median ``|grad|`` of every parameter group at the first step (and the share below AdamW's
   ``eps`` = 1e-8), the delta's Frobenius norm at layer 0's query at init and after training,
   and held-out accuracy. Rows are read at run time, never copied into the repository. To keep
   the run near 15 minutes on 2 CPU cores, the topic task (4 choices: twice the pairs) runs the
   old defaults at order 2 only (``--all-old`` runs them at order 4 too).

Usage::

    python benchmarks/learning_dynamics.py                         # ~15 min on 2 CPU cores
    python benchmarks/learning_dynamics.py --quick                 # a minute: smoke test
    python benchmarks/learning_dynamics.py --tasks sst2 --threads 1

Writes ``benchmarks/results/learning_dynamics/learning_dynamics.{json,md,png}`` (``--json``).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import random
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
if str(REPO) not in sys.path:  # t0_recipes sits at the repository root
    sys.path.insert(0, str(REPO))

import tensoradapt as ta  # noqa: E402
from common import RESULTS_DIR, environment, markdown_table, write_outputs  # noqa: E402
from tensoradapt.algebra.contraction import materialize  # noqa: E402
from tensoradapt.algebra.leaf import leaf_size  # noqa: E402
from tensoradapt.layers import AdaptedLinear  # noqa: E402

DEFAULT_JSON = RESULTS_DIR / "learning_dynamics" / "learning_dynamics.json"
#: Few-shot AdamW rate of every trained parameter (T-Few's few-shot rate, docs/training_dynamics.md).
LR = 3e-3
#: Few-shot steps of 8 rows (10 passes over the 32 shots), as the issue's runs.
STEPS = 40
DEFAULT_DATA = Path(os.environ.get("TENSORADAPT_T0_DATA", REPO.parent / "shared" / "data"))
ADAM_EPS = 1e-8

#: (name, config keyword arguments). The TLoRA-based methods at orders 2 and 4.
CONFIGS: list[tuple[str, dict]] = [
    ("LoRA", dict(method="lora", lora_rank=8)),
    ("Poly", dict(method="poly", lora_rank=8, n_skills=8)),
    ("MHR", dict(method="mhr", lora_rank=8, n_skills=8, n_heads=8)),
    ("T-REX", dict(method="trex", trex_down=4, trex_up=8, lora_rank=8)),  # lora_rank as copied from LoRA
    *[
        (f"{label} N={order}", dict(method=method, lora_rank=8, tensor_rank=8, order=order))
        for order in (2, 4)
        for method, label in (("tlora", "TLoRA"), ("tensorpoly_i", "TensorPoly-I"), ("tensorpoly_ii", "TensorPoly-II"))
    ],
]
#: Methods whose old and new defaults build the same adapter (measured once, reported for both).
UNCHANGED = ("lora", "poly", "mhr")

TASKS = {
    "sst2": dict(folder="sst2", text="sentence", choices=("negative", "positive"), max_length=48,
                 label="sentiment (SST-2)"),
    "ag_news": dict(folder="ag_news", text="text", choices=("World politics", "Sports", "Business",
                                                              "Science and technology"),
                    max_length=32, label="4-way topic (AG News)"),
}


def config_for(kwargs: dict, variant: str) -> ta.AdapterConfig:
    """``new``: the library's defaults. ``old``: the defaults before the fix (T-REX at alpha / rank)."""
    if variant == "new":
        return ta.AdapterConfig(**kwargs)
    if kwargs["method"] == "trex":
        return ta.AdapterConfig(**kwargs, lora_alpha=1.0 / kwargs["lora_rank"])  # the old 1 / lora_rank
    return ta.AdapterConfig.paper_defaults(**kwargs, routing_noise="relaxed_bernoulli")


def variants_of(kwargs: dict) -> tuple[str, ...]:
    return ("new",) if kwargs["method"] in UNCHANGED else ("old", "new")


# ---------------------------------------------------------------------------------------------
# 1. init scale


def task_matrices(layer: AdaptedLinear) -> tuple[torch.Tensor, torch.Tensor]:
    """``A (d_in, r)``, ``B (r, d_out)`` of task 0 (eval routing); T-REX: its vectors."""
    combiner = layer.combiner
    if combiner.token_routed:
        return layer.bank.vectors()
    was = combiner.training
    combiner.eval()
    try:
        return combiner.adapter_matrices(layer.bank, 0 if combiner.routed else None)
    finally:
        combiner.train(was)


def init_scale(kwargs: dict, variant: str, dim: int, seed: int) -> dict:
    """Std of ``A`` and ``B`` at init, and ``B``'s first Adam step over LoRA's (``lr * sqrt(r d)``)."""
    torch.manual_seed(seed)
    config = config_for(kwargs, variant)
    layer = AdaptedLinear(torch.nn.Linear(dim, dim), config).double()
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(64, dim, generator=generator, dtype=torch.float64)
    target = torch.randn(64, dim, generator=generator, dtype=torch.float64)
    down, up = task_matrices(layer)
    out = {"a_std": float(down.detach().std()), "b_std": float(up.detach().std())}
    if layer.combiner.token_routed:
        return out
    ((x @ down @ up - target) ** 2).mean().backward()
    lr = 1e-3
    with torch.no_grad():
        before = task_matrices(layer)[1].clone()
        for parameter in layer.bank.parameters():
            if parameter.grad is not None:
                parameter -= lr * torch.sign(parameter.grad)
        after = task_matrices(layer)[1]
    out["b_first_step_vs_lora"] = float((after - before).detach().norm() / (lr * math.sqrt(up.numel())))
    return out


# ---------------------------------------------------------------------------------------------
# 2. isolated layer


def simple_tensor_rows(dim: int, count: int, order: int, generator: torch.Generator) -> torch.Tensor:
    """``(count, dim)`` unit rows, each one simple tensor of ``order`` random leaves (cut to ``dim``)."""
    leaves = torch.randn(count, 1, order, leaf_size(dim, order), generator=generator)
    rows = materialize(leaves, dim)
    return rows / rows.norm(dim=-1, keepdim=True)


def isolated_fit(kwargs: dict, variant: str, *, steps: int, seed: int, dim: int = 384, lr: float = 1e-3) -> dict:
    """Fit a rank-8 target (norm 0.5) with one adapted layer; relative error along the way."""
    order = kwargs.get("order", 2)
    generator = torch.Generator().manual_seed(1234 + order)
    down_target = simple_tensor_rows(dim, 8, order, generator)
    up_target = simple_tensor_rows(dim, 8, order, generator)
    target = (down_target.T * torch.linspace(1.0, 0.3, 8)) @ up_target
    target = target * (0.5 / target.norm())
    torch.manual_seed(seed)
    layer = AdaptedLinear(torch.nn.Linear(dim, dim), config_for(kwargs, variant))
    layer.base.requires_grad_(False)
    optimizer = torch.optim.AdamW([p for p in layer.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    task = 0 if layer.combiner.routed else None
    inputs = torch.Generator().manual_seed(seed)
    errors = {}
    layer.train()
    for step in range(1, steps + 1):
        x = torch.randn(64, dim, generator=inputs)
        loss = ((layer.delta(x, task) - x @ target) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step in (steps // 10, steps // 3, steps):
            errors[step] = relative_error(layer, target, task)
    return {"steps": steps, "relative_error": errors[steps], "relative_error_by_step": errors}


@torch.no_grad()
def relative_error(layer: AdaptedLinear, target: torch.Tensor, task) -> float:
    eye = torch.eye(layer.d_in)
    layer.eval()
    delta = layer.delta(eye, task)  # the dense update through the forward path (T-REX too)
    layer.train()
    return float((delta - target).norm() / target.norm())


# ---------------------------------------------------------------------------------------------
# 3. real model


def read_task(name: str, data_dir: Path, *, shots: int, held_out: int, seed: int):
    """``(train, held_out)`` Examples from ``<data_dir>/t0_train/<folder>/train.jsonl`` (task id 0)."""
    from t0_recipes.data.rows import Example

    spec = TASKS[name]
    path = data_dir / "t0_train" / spec["folder"] / "train.jsonl"
    with path.open() as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    examples = [Example(0, row[spec["text"]].strip(), spec["choices"], int(row["label"])) for row in rows]
    order = random.Random(seed).sample(range(len(examples)), shots + held_out)
    return [examples[i] for i in order[:shots]], [examples[i] for i in order[shots:]]


def layer0_query(model) -> AdaptedLinear:
    return model.encoder.encoder.layer[0].attention.self.query


def delta_norm(layer: AdaptedLinear) -> float:
    """``||delta||_F`` of task 0 (T-REX: through the forward path on the identity)."""
    task = 0 if layer.combiner.routed else None
    with torch.no_grad():
        if layer.combiner.token_routed:
            was = layer.training
            layer.eval()
            value = float(layer.delta(torch.eye(layer.d_in)).norm())
            layer.train(was)
            return value
        return float(layer.delta_weight(task).norm())


def group_of(name: str) -> str:
    if ".bank.down" in name:
        return "down (A)"
    if ".bank.up" in name:
        return "up (B)"
    return "routing"


def few_shot(base, tokenizer, kwargs: dict, variant: str, task: dict, *, steps: int, batch_size: int, lr: float,
             seed: int) -> dict:
    """Train ``variant``'s adapter alone on the shots; gradients at step 1, delta norms, held-out accuracy."""
    from t0_recipes.scoring.cross_encoder import PairCollator, choice_logits, pair_loss

    config = config_for(kwargs, variant)
    model = copy.deepcopy(base)
    torch.manual_seed(seed)
    ta.inject(model, config)
    route = ta.use_routing if config.is_routed else None
    collate = PairCollator(tokenizer, max_length=task["max_length"])
    parameters = ta.trainable_parameters(model)
    optimizer = torch.optim.AdamW(parameters, lr=lr, eps=ADAM_EPS, weight_decay=0.0)
    rng = random.Random(seed)
    order: list[int] = []
    out: dict = {"delta_norm_init": delta_norm(layer0_query(model))}
    model.train()
    for step in range(steps):
        if not order:
            order = rng.sample(range(len(task["train"])), len(task["train"]))
        batch = collate([task["train"][i] for i in order[:batch_size]])
        order = order[batch_size:]
        loss = pair_loss(choice_logits(model, batch, route=route), batch["gold"])
        optimizer.zero_grad()
        loss.backward()
        if step == 0:
            out["grad_step1"] = gradient_summary(model)
        optimizer.step()
    out["delta_norm_trained"] = delta_norm(layer0_query(model))
    out["loss_last"] = float(loss)
    out["accuracy"] = accuracy(model, collate, task["held_out"], route)
    return out


def gradient_summary(model) -> dict:
    """Per parameter group: median ``|grad|`` at layer 0's query and over every layer, share below eps.

    Entries whose gradient is exactly zero by construction at step 1 (LoRA's ``A`` and every
    leaf but the last of a zero ``B``, while ``B`` is zero) are left out of the medians and
    shares, and counted in ``zero_share``.
    """
    groups: dict[str, list[torch.Tensor]] = {}
    first: dict[str, list[torch.Tensor]] = {}
    for name, parameter in model.named_parameters():
        if parameter.grad is None:
            continue
        group = group_of(name)
        grad = parameter.grad.detach().abs().flatten()
        groups.setdefault(group, []).append(grad)
        if "layer.0.attention.self.query" in name:
            first.setdefault(group, []).append(grad)
    def live(values: torch.Tensor) -> torch.Tensor:
        return values[values > 0]

    summary = {}
    for group, grads in groups.items():
        values = torch.cat(grads)
        nonzero = live(values)
        query = live(torch.cat(first[group])) if group in first else torch.empty(0)
        summary[group] = {
            "median_all_layers": float(nonzero.median()) if nonzero.numel() else 0.0,
            "below_eps_share": float((nonzero < ADAM_EPS).float().mean()) if nonzero.numel() else 0.0,
            "zero_share": 1.0 - nonzero.numel() / values.numel(),
            "median_layer0_query": float(query.median()) if query.numel() else None,
        }
    return summary


def accuracy(model, collate, rows, route, batch_size: int = 50) -> float:
    from t0_recipes.scoring.cross_encoder import choice_logits

    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            batch = collate(rows[start : start + batch_size])
            correct += int((choice_logits(model, batch, route=route).argmax(-1) == batch["gold"]).sum())
    return correct / len(rows)


# ---------------------------------------------------------------------------------------------
# report


def fmt(value, spec: str = ".3g") -> str:
    return "-" if value is None else format(value, spec)


def markdown(result: dict) -> str:
    settings = result["settings"]
    lines = [
        "# Learning dynamics: the library's defaults (new) against the previous ones (old)",
        "",
        f"{result['environment']['cpu_count']} CPU(s), torch {result['environment']['torch']}, "
        f"{settings['threads']} thread(s); {'quick run' if settings['quick'] else 'full run'}, "
        f"{result['wall_s']:.0f} s. `old`: reference leaf init, sum-normalised routing with relaxed-Bernoulli "
        "noise, T-REX scaled by 1 / lora_rank (8 here); `new`: `AdapterConfig()` defaults. "
        "LoRA, Poly and MHR build the same adapter under both.",
        "",
        "## 1. Scale at init",
        "",
        "Standard deviation of the task's A and B at uniform routing, and how far Adam's first step moves B "
        "as a share of how far it moves LoRA's B (1 = LoRA's pace).",
        "",
    ]
    rows = []
    for entry in result["init_scale"]:
        rows.append([entry["name"], entry["variant"], entry["dim"], fmt(entry["a_std"]), fmt(entry["b_std"]),
                     fmt(entry.get("b_first_step_vs_lora"))])
    lines.append(markdown_table(["method", "defaults", "d", "std A", "std B", "B's first step / LoRA's"], rows,
                                align=["l", "l", "r", "r", "r", "r"]))
    lines += ["", f"## 2. Isolated layer: relative error after {settings['isolated_steps']} Adam steps", ""]
    rows = [[e["name"], e["variant"], fmt(e["relative_error"], ".3f")] for e in result["isolated"]]
    lines.append(markdown_table(["method", "defaults", "relative error"], rows, align=["l", "l", "r"]))
    if not result["tasks"]:
        lines += ["", f"## 3. Real model: skipped ({result.get('skipped', 'no task asked for: --tasks')})"]
        return "\n".join(lines)
    lines += [
        "",
        f"## 3. Real model: {settings['shots']} shots, {settings['steps']} AdamW steps of {settings['batch_size']} "
        f"at lr {settings['lr']:g}, {settings['held_out']} held-out rows",
        "",
    ]
    for task_name, runs in result["tasks"].items():
        lines += [f"### {TASKS[task_name]['label']}", ""]
        rows = []
        for run in runs:
            grads = run["grad_step1"]
            grad_text = ", ".join(
                f"{group} {fmt(values['median_layer0_query'])}" for group, values in grads.items()
                if values["median_layer0_query"] is not None
            ) or "-"
            below = max((values["below_eps_share"] for values in grads.values()), default=0.0)
            rows.append([run["name"], run["variant"], f"{100 * run['accuracy']:.1f}", fmt(run["delta_norm_init"]),
                         fmt(run["delta_norm_trained"]), grad_text, f"{100 * below:.0f} %"])
        lines.append(markdown_table(
            ["method", "defaults", "accuracy %", "delta norm, init", "delta norm, trained",
             "median abs grad at step 1, layer 0 query (non-zero entries)", "grads below eps (worst group)"],
            rows, align=["l", "l", "r", "r", "r", "l", "r"]))
        lines += ["", f"Majority class: {100 * result['majority'][task_name]:.1f} %.", ""]
    lines += ["## Conclusions (computed)", ""] + [f"- {text}" for text in result["conclusions"]]
    return "\n".join(lines)


def conclusions(result: dict) -> list[str]:
    texts = []
    for task_name, runs in result["tasks"].items():
        lora = next(r["accuracy"] for r in runs if r["name"] == "LoRA")
        chance = 1.0 / len(TASKS[task_name]["choices"])
        for variant in ("old", "new"):
            picked = [r for r in runs if r["name"] != "LoRA" and (r["variant"] == variant or r["method"] in UNCHANGED)]
            close = [r["name"] for r in picked if r["accuracy"] >= lora - 0.05 and r["accuracy"] >= chance + 0.08]
            far = [f"{r['name']} ({100 * r['accuracy']:.1f})" for r in picked if r["name"] not in close]
            texts.append(
                f"{TASKS[task_name]['label']}, {variant} defaults: {len(close)} of {len(picked)} within 5 points of "
                f"LoRA ({100 * lora:.1f} %) and 8 above chance ({100 * chance:.0f} %)"
                + (f"; not: {', '.join(far)}" if far else "")
            )
    return texts


def plot(result: dict, path: Path) -> None:
    tasks = list(result["tasks"])
    panels = 1 + len(tasks)
    figure, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 4.8), squeeze=False)
    axes = axes[0]
    # panel 1: isolated-layer error
    names = list(dict.fromkeys(e["name"] for e in result["isolated"]))
    for offset, variant, colour in ((-0.2, "old", "C3"), (0.2, "new", "C0")):
        values = [next((e["relative_error"] for e in result["isolated"] if e["name"] == n and
                        (e["variant"] == variant or e["method"] in UNCHANGED)), math.nan) for n in names]
        axes[0].bar([i + offset for i in range(len(names))], values, width=0.4, color=colour, label=f"{variant} defaults")
    axes[0].set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    axes[0].set_ylabel("relative error (1 = nothing learned)")
    axes[0].set_title(f"isolated layer, {result['settings']['isolated_steps']} Adam steps")
    axes[0].legend(fontsize=8)
    for axis, task_name in zip(axes[1:], tasks):
        runs = result["tasks"][task_name]
        names = list(dict.fromkeys(r["name"] for r in runs))
        for offset, variant, colour in ((-0.2, "old", "C3"), (0.2, "new", "C0")):
            values = [100 * next((r["accuracy"] for r in runs if r["name"] == n and
                                  (r["variant"] == variant or r["method"] in UNCHANGED)), math.nan) for n in names]
            axis.bar([i + offset for i in range(len(names))], values, width=0.4, color=colour, label=f"{variant} defaults")
        lora = 100 * next(r["accuracy"] for r in runs if r["name"] == "LoRA")
        axis.axhline(lora, color="k", linestyle="--", linewidth=1, label="LoRA")
        axis.axhline(lora - 5, color="k", linestyle=":", linewidth=1, label="LoRA - 5")
        axis.axhline(100 * result["majority"][task_name], color="C7", linewidth=1, label="majority class")
        axis.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
        axis.set_ylabel("held-out accuracy (%)")
        axis.set_title(f"{TASKS[task_name]['label']}, {result['settings']['shots']} shots")
        axis.legend(fontsize=7, loc="lower left")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="output JSON (PNG and .md beside it)")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA, help="folder holding t0_train/")
    parser.add_argument("--tasks", default="sst2,ag_news", help="comma-separated: sst2, ag_news")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (0: torch's default)")
    parser.add_argument("--lr", type=float, default=LR, help="AdamW learning rate of every trained parameter")
    parser.add_argument("--steps", type=int, default=STEPS, help="few-shot steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--all-old", action="store_true", help="run the old defaults at order 4 on the topic task too")
    parser.add_argument("--quick", action="store_true", help="a smoke run: few steps, rows and configs")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    quick = args.quick
    configs = CONFIGS if not quick else [c for c in CONFIGS if c[0] in ("LoRA", "TLoRA N=2", "TensorPoly-II N=4", "T-REX")]
    settings = dict(
        quick=quick, threads=torch.get_num_threads(), lr=args.lr, seed=args.seed,
        steps=3 if quick else args.steps, batch_size=8, shots=32, held_out=40 if quick else 400,
        isolated_steps=20 if quick else 300, adam_eps=ADAM_EPS,
    )
    plan = [(name, kwargs, variant) for name, kwargs in configs for variant in variants_of(kwargs)]
    result: dict = {"settings": settings, "environment": environment(torch.device("cpu")), "init_scale": [],
                    "isolated": [], "tasks": {}, "majority": {}}

    for name, kwargs, variant in tqdm(plan, desc="init scale", unit="config", file=sys.stderr):
        for dim in (384, 2048):
            result["init_scale"].append({"name": name, "method": kwargs["method"], "variant": variant, "dim": dim,
                                         **init_scale(kwargs, variant, dim, args.seed)})
    for name, kwargs, variant in tqdm(plan, desc="isolated layer", unit="config", file=sys.stderr):
        result["isolated"].append({"name": name, "method": kwargs["method"], "variant": variant,
                                   **isolated_fit(kwargs, variant, steps=settings["isolated_steps"], seed=args.seed)})

    tasks = [t for t in args.tasks.split(",") if t]
    if not (args.data_dir / "t0_train").is_dir():
        result["skipped"] = f"no {args.data_dir / 't0_train'} (pass --data-dir or set TENSORADAPT_T0_DATA)"
        print(f"learning_dynamics: real-model runs skipped: {result['skipped']}", file=sys.stderr)
        tasks = []
    if tasks:
        from t0_recipes.scoring.cross_encoder import load_cross_encoder

        base, tokenizer = load_cross_encoder()
        for task_name in tasks:
            train, held_out = read_task(task_name, args.data_dir, shots=settings["shots"],
                                        held_out=settings["held_out"], seed=args.seed)
            task = dict(TASKS[task_name], train=train, held_out=held_out)
            counts = [sum(e.gold == c for e in held_out) for c in range(len(task["choices"]))]
            result["majority"][task_name] = max(counts) / len(held_out)
            runs = []
            task_plan = [
                (name, kwargs, variant) for name, kwargs, variant in plan
                if task_name == "sst2" or args.all_old or variant == "new" or kwargs.get("order", 2) == 2
            ]
            for name, kwargs, variant in tqdm(task_plan, desc=f"32 shots: {task_name}", unit="run", file=sys.stderr):
                run = few_shot(base, tokenizer, kwargs, variant, task, steps=settings["steps"],
                               batch_size=settings["batch_size"], lr=args.lr, seed=args.seed)
                runs.append({"name": name, "method": kwargs["method"], "variant": variant, **run})
            result["tasks"][task_name] = runs
    result["wall_s"] = time.perf_counter() - start
    result["conclusions"] = conclusions(result)
    text = markdown(result)
    write_outputs(args.json, result, text)
    plot(result, args.json.with_suffix(".png"))
    print(text)
    return result


if __name__ == "__main__":
    main()
