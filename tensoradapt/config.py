"""Adapter configuration: one dataclass for every method, serialised to ``adapter_config.json``."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "AdapterConfig",
    "INITS",
    "METHODS",
    "METHOD_LABELS",
    "ROUTING_NOISES",
    "ROUTING_NORMALIZATIONS",
    "TRAINING_MODES",
    "TREX_PRIOR_MIXES",
]

logger = logging.getLogger(__name__)

METHODS: tuple[str, ...] = ("lora", "tlora", "poly", "mhr", "tensorpoly_i", "tensorpoly_ii", "trex")
#: Display names of the methods, as the papers print them (reports, plots, command-line help).
METHOD_LABELS: dict[str, str] = {
    "lora": "LoRA",
    "tlora": "TLoRA",
    "poly": "Poly",
    "mhr": "MHR",
    "tensorpoly_i": "TensorPoly-I",
    "tensorpoly_ii": "TensorPoly-II",
    "trex": "T-REX",
}
TRAINING_MODES: tuple[str, ...] = ("full", "routing_only", "modules_only")
ROUTING_NOISES: tuple[str, ...] = ("relaxed_bernoulli", "none")
INITS: tuple[str, ...] = ("matched", "lora", "reference")
ROUTING_NORMALIZATIONS: tuple[str, ...] = ("sum", "mean", "identity")
TREX_PRIOR_MIXES: tuple[str, ...] = ("weights", "logits")
CONFIG_NAME = "adapter_config.json"
#: Key of ``adapter_config.json`` that is no config field: ``{file name: sha256}`` of the files saved beside it.
SHA256_KEY = "sha256"


@dataclass
class AdapterConfig:
    """Everything that defines an adapter; every field has a default and help text.

    Methods and the fields they read:

    * ``lora``: ``lora_rank``. ``tlora``: ``lora_rank``, ``tensor_rank``, ``order``.
    * ``poly``: ``lora_rank``, ``n_skills``, ``n_tasks``. ``mhr``: the same plus ``n_heads``.
    * ``tensorpoly_i`` (routes the ``tensor_rank`` simple tensors) and ``tensorpoly_ii`` (routes
      every order's leaves): ``lora_rank``, ``tensor_rank``, ``order``, ``n_tasks``.
    * ``trex``: ``trex_down`` (r1), ``trex_up`` (r2), the ``trex_*`` router options, ``init``; with
      ``trex_entangled`` the vectors are entangled tensors of ``tensor_rank`` and ``order``. The
      delta is scaled by ``lora_alpha`` (1 when ``None``, as the reference code): every T-REX
      expert has rank one, so ``lora_rank`` is not read (a value copied from another method's
      config no longer divides the delta).

    The defaults are the library's, chosen so that every method learns at about LoRA's pace
    under Adam (``docs/training_dynamics.md``): ``init='matched'``, and for TensorPoly-I / -II
    mean-normalised routing without noise. `paper_defaults` gives the paper's and reference
    code's settings (``init='reference'``, sum-normalised routing everywhere).
    """

    method: str = field(default="lora", metadata={"help": f"one of {METHODS}"})
    target_modules: str | None = field(
        default=None,
        metadata={"help": "regex, full match on module names; None picks the built-in default for the model type"},
    )
    n_tasks: int = field(default=1, metadata={"help": "rows of the task-routing matrix (routed methods)"})
    lora_rank: int = field(default=1, metadata={"help": "LoRA rank r of every expert / skill"})
    lora_alpha: float | None = field(
        default=None,
        metadata={
            "help": "delta scaled by lora_alpha / lora_rank; None means 1 / lora_rank (the paper). T-REX: by "
            "lora_alpha alone (1 when None), its experts being rank one"
        },
    )
    n_skills: int = field(default=8, metadata={"help": "skills S in the Poly / MHR inventory"})
    n_heads: int = field(default=1, metadata={"help": "MHR heads H; must divide d_in and d_out"})
    tensor_rank: int = field(default=1, metadata={"help": "tensor rank R of every entangled column / row"})
    order: int = field(default=2, metadata={"help": "tensor order N (number of leaves)"})
    init: str = field(
        default="matched",
        metadata={
            "help": "entangled leaves: 'matched' (default): A's entries with LoRA's Kaiming std, B zero through "
            "one zero leaf per rank term, leaf sizes set so the delta grows at LoRA's pace under Adam; "
            "'lora': A Kaiming, B zero through the zero-output scheme (needs tensor_rank >= 2 at order >= 2); "
            "'reference': every leaf of A and B uniform(+-gain/sqrt(d_in)) as the TensorPoly code (tiny, "
            "non-zero delta)"
        },
    )
    normalize_outer: bool = field(
        default=False,
        metadata={
            "help": "parameter-free LayerNorm after each outer product, joint over the r LoRA columns and the "
            "product as in the reference code"
        },
    )
    routing_noise: str | None = field(
        default=None,
        metadata={
            "help": "'relaxed_bernoulli' (Gumbel-sigmoid while training, Poly) or 'none' (sigmoid always, the "
            "TensorPoly paper's final runs); None: 'none' for tensorpoly_i / tensorpoly_ii, 'relaxed_bernoulli' "
            "for poly / mhr"
        },
    )
    routing_temperature: float = field(default=1.0, metadata={"help": "temperature of the relaxed Bernoulli"})
    routing_init_range: float = field(default=1e-3, metadata={"help": "routing logits init uniform(+-range)"})
    routing_normalization: str | None = field(
        default=None,
        metadata={
            "help": "routing weights divided by their 'sum' (they sum to 1: Poly, the paper) or their 'mean' "
            "(they sum to the number of experts: uniform TensorPoly-I routing is TLoRA), or 'identity' (the "
            "routing logits are the weights: no sigmoid, no noise; exact one-hot rows of an imported LoRA "
            "library); None: 'mean' for tensorpoly_i / tensorpoly_ii, 'sum' for poly / mhr"
        },
    )
    mode: str = field(default="full", metadata={"help": f"training mode, one of {TRAINING_MODES}"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the adapter's input"})
    trex_down: int = field(default=4, metadata={"help": "T-REX r1: down (a_i) vectors per layer"})
    trex_up: int = field(default=8, metadata={"help": "T-REX r2: up (b_j) vectors per layer"})
    trex_top_k: int | None = field(default=None, metadata={"help": "T-REX: keep the top-k pairs per token"})
    trex_balance_weight: float = field(
        default=0.0,
        metadata={"help": "T-REX: weight of the Switch load-balancing loss, 0 = off (tensoradapt.trex.auxiliary_loss)"},
    )
    trex_n_clusters: int = field(default=32, metadata={"help": "T-REX: k of the semantic prior's k-means"})
    trex_entangled: bool = field(default=False, metadata={"help": "T-REX: vectors as entangled tensors"})
    trex_prior_mix: str = field(
        default="weights",
        metadata={
            "help": "T-REX: how the gate g mixes the semantic prior in: 'weights' (1-g) softmax(token) + g "
            "softmax(prior), as the reference code mixes after the softmax; 'logits' softmax((1-g) token + g prior)"
        },
    )

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field and what would fix it."""
        if self.method not in METHODS:
            raise ValueError(f"method={self.method!r} is unknown; choose one of {METHODS}")
        if self.mode not in TRAINING_MODES:
            raise ValueError(f"mode={self.mode!r} is unknown; choose one of {TRAINING_MODES}")
        if self.routing_noise is not None and self.routing_noise not in ROUTING_NOISES:
            raise ValueError(f"routing_noise={self.routing_noise!r} is unknown; choose None or one of {ROUTING_NOISES}")
        if self.init not in INITS:
            raise ValueError(f"init={self.init!r} is unknown; choose one of {INITS}")
        if self.routing_normalization is not None and self.routing_normalization not in ROUTING_NORMALIZATIONS:
            raise ValueError(
                f"routing_normalization={self.routing_normalization!r} is unknown; choose None or one of "
                f"{ROUTING_NORMALIZATIONS}"
            )
        for name in ("n_tasks", "lora_rank", "n_skills", "n_heads", "tensor_rank", "order", "trex_down", "trex_up",
                     "trex_n_clusters"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        top_k = self.trex_top_k
        if top_k is not None and (
            isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= self.trex_down * self.trex_up
        ):
            raise ValueError(f"trex_top_k must be None or an integer in [1, trex_down * trex_up], got {top_k!r}")
        if not self.trex_balance_weight >= 0.0:
            raise ValueError(f"trex_balance_weight must be >= 0, got {self.trex_balance_weight}")
        if self.trex_prior_mix not in TREX_PRIOR_MIXES:
            raise ValueError(f"trex_prior_mix={self.trex_prior_mix!r} is unknown; choose one of {TREX_PRIOR_MIXES}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")
        if self.routing_temperature <= 0:
            raise ValueError(f"routing_temperature must be > 0, got {self.routing_temperature}")
        if self.is_entangled:  # order 40 would ask for terabytes in the first forward (tensoradapt.sizes)
            from tensoradapt.sizes import check_materialized_size

            check_materialized_size(self)

    @classmethod
    def paper_defaults(cls, **overrides) -> "AdapterConfig":
        """The paper's and the TensorPoly reference code's settings, which the library's defaults replace.

        ``init='reference'`` (every leaf ``uniform(+-gain / sqrt(d_in))``, ``B`` not zero) and
        ``routing_normalization='sum'`` (weights sum to 1 for every routed method). Everything
        else is the same as ``AdapterConfig(**overrides)``, whose routing noise is already the
        papers' (relaxed Bernoulli for Poly / MHR, none for TensorPoly); ``overrides`` win. The
        library's defaults before this change are
        ``paper_defaults(routing_noise='relaxed_bernoulli')``. These settings
        leave TLoRA-based methods with a near-zero delta whose gradients fall below Adam's
        ``eps`` (``docs/training_dynamics.md``).
        """
        return cls(**{"init": "reference", "routing_normalization": "sum", **overrides})

    @property
    def scaling(self) -> float:
        """Factor on the delta: ``lora_alpha / lora_rank`` (``1 / lora_rank`` by default).

        T-REX: ``lora_alpha`` (1 by default); its experts are rank one and ``lora_rank`` is not read.
        """
        alpha = 1.0 if self.lora_alpha is None else self.lora_alpha
        if self.method == "trex":
            return alpha
        return alpha / self.lora_rank

    @property
    def resolved_routing_noise(self) -> str:
        """``routing_noise``, with ``None`` resolved: ``none`` for TensorPoly-I / -II, else ``relaxed_bernoulli``.

        The relaxed-Bernoulli sample of a logit near 0 is about ``uniform(0, 1)``: it rescales every
        expert at random on every step. Poly's skills move in lockstep (they share their gradient's
        direction), so their mixture hardly feels it; TensorPoly-I's rank components are parts of
        one adapter and do not (docs: training dynamics). The TensorPoly paper's final runs use
        no noise.
        """
        if self.routing_noise is not None:
            return self.routing_noise
        return "none" if self.method in ("tensorpoly_i", "tensorpoly_ii") else "relaxed_bernoulli"

    @property
    def resolved_routing_normalization(self) -> str:
        """``routing_normalization``, with ``None`` resolved: ``mean`` for TensorPoly-I / -II, else ``sum``."""
        if self.routing_normalization is not None:
            return self.routing_normalization
        return "mean" if self.method in ("tensorpoly_i", "tensorpoly_ii") else "sum"

    @property
    def is_routed(self) -> bool:
        """Whether the method has a task-routing matrix."""
        return self.method in ("poly", "mhr", "tensorpoly_i", "tensorpoly_ii")

    @property
    def is_entangled(self) -> bool:
        """Whether A and B are entangled tensors."""
        return self.method in ("tlora", "tensorpoly_i", "tensorpoly_ii") or (
            self.method == "trex" and self.trex_entangled
        )

    def to_dict(self) -> dict:
        """Plain JSON-serialisable dict of the fields."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "AdapterConfig":
        """Inverse of [`to_dict`][tensoradapt.config.AdapterConfig.to_dict].

        Unknown keys raise a ``ValueError`` naming them.

        Files written before ``routing_normalization`` existed were trained with sum-normalised
        routing and with T-REX scaled by ``lora_alpha / lora_rank``: such a dict (every field that
        ``to_dict`` wrote then, and no ``routing_normalization``) is read with
        ``routing_normalization='sum'`` and, for T-REX, ``lora_alpha`` set to the scale it had, so
        a saved adapter computes what it did. A partial dict takes today's defaults.
        """
        if isinstance(values, dict) and SHA256_KEY in values:  # the hashes checkpoint.py records
            values = {key: value for key, value in values.items() if key != SHA256_KEY}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown adapter config keys {unknown}; known keys are {sorted(known)}")
        values = dict(values)
        if set(values) == known - {"routing_normalization"}:
            values["routing_normalization"] = "sum"
            rank = values.get("lora_rank", 1)
            if values["method"] == "trex" and rank != 1:
                alpha = values.get("lora_alpha")
                values["lora_alpha"] = (1.0 if alpha is None else alpha) / rank
                logger.info("T-REX config without routing_normalization (older file): lora_alpha set to %g, "
                            "the scale it was trained with (lora_alpha / lora_rank)", values["lora_alpha"])
        return cls(**values)

    def to_json(self, path: str | os.PathLike) -> None:
        """Write ``adapter_config.json`` content to ``path`` (a file or a directory)."""
        path = Path(path)
        if path.is_dir():
            path = path / CONFIG_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "AdapterConfig":
        """Read a config from a file or a directory holding ``adapter_config.json``."""
        path = Path(path)
        if path.is_dir():
            path = path / CONFIG_NAME
        return cls.from_dict(json.loads(path.read_text()))
