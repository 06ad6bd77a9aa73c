"""Draw the concept figures of the docs from the library itself: ``python docs/make_figures.py``.

* ``docs/assets/entangled_tensor.png``: an entangled vector of ``d = 60``, order 2, leaf size
  ``q = 8``, shown as its uncut ``q x q`` tensor: each rank's simple tensor ``v_r1 (x) v_r2``, their
  sum, and which entries the cut to ``d`` keeps.
* ``docs/assets/routing_shapes.png``: the routing parameters each method learns, as the
  library allocates them for 6 tasks on one ``16 -> 16`` layer (Poly ``Z (T, S)``, MHR
  ``(T, H, S)``, TensorPoly-I ``(T, R)``, TensorPoly-II ``(T, N, R)``) and T-REX's per-token
  weights over its ``r1 r2`` pairs for 12 tokens, all with random values.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from tensoradapt import AdaptedLinear, AdapterConfig, EntangledTensor  # noqa: E402

ASSETS = Path(__file__).resolve().parent / "assets"


def entangled_tensor_figure(path: Path) -> None:
    """Rank-3, order-2 entangled vector of size 60 (``q = 8``): its simple tensors, sum and cut."""
    torch.manual_seed(0)
    vector = EntangledTensor(dim=60, rank=3, order=2, init="normal", std=1.0)
    with torch.no_grad():
        full = vector.full()  # (q, q), uncut
        q = full.shape[-1]
        simple = [torch.outer(vector.leaves[r, 0], vector.leaves[r, 1]) for r in range(vector.rank)]
    kept = (torch.arange(q * q) < vector.dim).reshape(q, q)
    panels = [*(rf"rank {r + 1}: $v_{{{r + 1},1}} \otimes v_{{{r + 1},2}}$" for r in range(vector.rank)),
              "sum over ranks", f"cut to d = {vector.dim} (grey: dropped)"]
    images = [*simple, full, torch.where(kept, full, torch.nan)]
    figure, axes = plt.subplots(1, len(images), figsize=(3.0 * len(images), 3.4))
    limit = float(full.abs().max())
    for axis, image, title in zip(axes, images, panels):
        axis.set_facecolor("0.8")
        axis.imshow(image.numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit)
        axis.set_title(title, fontsize=10)
        axis.set_xticks([])
        axis.set_yticks([])
    figure.suptitle(f"EntangledTensor(dim=60, rank=3, order=2): {vector.leaves.numel()} parameters for "
                    "60 entries, read row-major as torch.kron orders them", fontsize=11)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def routing_shapes_figure(path: Path) -> None:
    """The learned routing of every routed method on one layer, as the library shapes it."""
    torch.manual_seed(0)
    common = dict(lora_rank=2, n_tasks=6)
    configs = {
        "Poly: Z (tasks, skills)": AdapterConfig(method="poly", n_skills=4, **common),
        "MHR: (tasks, heads x skills)": AdapterConfig(method="mhr", n_skills=4, n_heads=4, **common),
        "TensorPoly-I: (tasks, R)": AdapterConfig(method="tensorpoly_i", tensor_rank=4, order=2, **common),
        "TensorPoly-II: (tasks, N x R)": AdapterConfig(method="tensorpoly_ii", tensor_rank=4, order=2, **common),
    }
    figure, axes = plt.subplots(1, len(configs) + 1, figsize=(17, 3.6))
    for axis, (title, config) in zip(axes, configs.items()):
        layer = AdaptedLinear(nn.Linear(16, 16), config).eval()
        with torch.no_grad():
            layer.combiner.logits.normal_(0, 2)
            weights = layer.combiner.weights(torch.arange(config.n_tasks))  # (T, *route_shape)
        axis.imshow(weights.reshape(config.n_tasks, -1).numpy(), cmap="viridis", aspect="auto")
        axis.set_title(title, fontsize=10)
        axis.set_ylabel("task")
        axis.set_xlabel("routed expert")
    trex = AdaptedLinear(nn.Linear(16, 16), AdapterConfig(method="trex", trex_down=2, trex_up=3)).eval()
    with torch.no_grad():
        trex.combiner.token_weight.normal_(0, 1)
        tokens = torch.randn(1, 12, 16)
        weights = trex.combiner.routing_weights(tokens)[0]  # (tokens, r1 r2)
    axes[-1].imshow(weights.numpy(), cmap="viridis", aspect="auto")
    axes[-1].set_title("T-REX: (tokens, r1 x r2 pairs)", fontsize=10)
    axes[-1].set_ylabel("token")
    axes[-1].set_xlabel("pair (i, j)")
    figure.suptitle("What each method routes (normalised weights; rows sum to 1 per head / order)", fontsize=11)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> None:
    ASSETS.mkdir(exist_ok=True)
    entangled_tensor_figure(ASSETS / "entangled_tensor.png")
    routing_shapes_figure(ASSETS / "routing_shapes.png")
    print(f"wrote {ASSETS}/entangled_tensor.png, routing_shapes.png")


if __name__ == "__main__":
    main()
