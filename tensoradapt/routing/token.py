"""T-REX's token router: a per-token softmax over rank-one pairs, guided by a semantic prior.

T-REX (Zhang et al., 2024) routes every token ``x`` over the ``r1 * r2`` experts ``b_j a_i^T`` of
a `RankOneBank`:

    delta(x) = sum_ij R_ij(x) b_j (a_i . x)

computed without any per-token ``d_in x d_out`` matrix (legend ``i`` r1, ``j`` r2, ``d`` d_in,
``o`` d_out)::

    h = x A             ... d, d i -> ... i        (the r1 projections a_i . x)
    g = sum_i R_ij h_i  ... i, ... i j -> ... j    (routing mixes them into r2 coefficients)
    delta = g B         ... j, j o -> ... o

so a token's update has rank at most ``min(r1, r2)`` while ``r1 * r2`` experts cost ``r1 + r2``
vectors.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from tensoradapt.algebra.entangled import check_positive
from tensoradapt.experts.base import ExpertBank
from tensoradapt.routing.base import Combiner, TaskIds, task_rows

__all__ = ["PRIOR_MIXES", "TokenRouter", "switch_balance_loss"]

#: How the semantic prior enters the routing (see `TokenRouter`).
PRIOR_MIXES: tuple[str, ...] = ("weights", "logits")


def switch_balance_loss(probs: torch.Tensor, dispatch: torch.Tensor) -> torch.Tensor:
    """Switch Transformer's load-balancing loss ``E * sum_e f_e P_e`` (1 when perfectly balanced).

    Args:
        probs: ``(tokens, E)`` routing probabilities (before any top-k cut).
        dispatch: ``(tokens, E)`` 0/1 mask of the experts each token is sent to.

    Returns:
        0-d: ``f_e`` is the share of dispatches that go to expert ``e``, ``P_e`` the mean
        probability of ``e``; only ``P`` carries gradient.
    """
    n_experts = probs.shape[-1]
    fraction = dispatch.sum(0) / dispatch.sum().clamp_min(1.0)
    return n_experts * (fraction.detach() * probs.mean(0)).sum()


class TokenRouter(Combiner):
    """T-REX routing: ``R(x) = softmax(W_r x)`` over the ``r1 * r2`` pairs, per token, plus a prior.

    Token logits ``W_r x`` (``W_r (r1*r2, d_in)``, zero-initialised: routing starts uniform).
    The semantic prior ``s (batch, k)`` (an example's cosine similarity to ``k`` centroids of
    sentence embeddings, from the model call's ``semantic_prior=`` or from a per-task table set by
    `set_task_prior`) becomes prior logits ``P s`` through a learnable projection
    ``P (r1*r2, k)`` (``nn.Linear``'s Kaiming-uniform init, as the reference code's mapper), and
    is mixed in with a learnable gate ``g = sigmoid(gate_logit)`` (``gate_logit`` zero-init, so
    ``g = 0.5``):

    * ``prior_mix="weights"`` (default; the abstract's "prior added to the router's weights" and
      the reference code, which mixes after the softmax)::

          R = (1 - g) softmax(W_r x) + g softmax(P s)

    * ``prior_mix="logits"``: ``R = softmax((1 - g) W_r x + g P s)``.

    Either way ``g = 0`` is the token router alone, ``g = 1`` the prior alone, and ``R`` sums
    to 1 over the pairs. Without a prior (no ``semantic_prior`` and no task table) the token
    router alone is used. Differences from the reference code, which computes
    ``32 sigma(100 w) softmax(W_r x) + 4 (1 - sigma(100 w)) P s`` and then halves the delta by a
    second zero-init gate ``sigma(100 w')``: no fixed 32 / 4 coefficients (the result is a
    distribution; the overall size is ``lora_alpha / lora_rank``), no 100x gate sharpness, the
    prior goes through a softmax, and ``g`` weighs the prior side (at init both give 0.5).

    Options:
        ``top_k``: keep the ``k`` largest mixed weights per token and renormalise them (the
        reference code leaves it unimplemented). ``balance_weight > 0``: while training, every
        call stores Switch's load-balancing loss (`switch_balance_loss`; ``f`` counts the top-k
        pairs, or each token's arg-max pair without top-k) in ``aux_loss``;
        ``tensoradapt.trex.auxiliary_loss(model)`` sums ``balance_weight * aux_loss`` over layers.
        T-REX itself uses neither.

    ``average = True`` (the *modules only* training mode) drops routing: every pair weighs
    ``1 / (r1 * r2)``.

    Non-persistent buffers (not trained, not in `save_adapter`'s file nor in the model's
    ``state_dict``; they follow ``.to()``): ``task_prior`` ``(n_tasks, k)`` or ``None``;
    ``calibrated`` ``(r1*r2,)`` mean routing weights or ``None``.

    Shapes (legend ``b`` batch, ``d`` d_in, ``e`` = ``r1*r2`` pairs, ``k`` clusters):
        ``routing_weights``: ``x (b, ..., d)``, prior ``(b, k)`` -> ``(b, ..., e)``, pair
        ``e = i * r2 + j``.
    """

    token_routed = True

    def __init__(
        self,
        d_in: int,
        n_down: int,
        n_up: int,
        *,
        n_clusters: int = 32,
        top_k: int | None = None,
        balance_weight: float = 0.0,
        prior_mix: str = "weights",
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("d_in", d_in), ("n_down", n_down), ("n_up", n_up), ("n_clusters", n_clusters)):
            check_positive(name, value)
        n_pairs = n_down * n_up
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= n_pairs):
            raise ValueError(f"top_k must be None or an int in [1, r1 * r2 = {n_pairs}], got {top_k!r}")
        if not balance_weight >= 0.0:
            raise ValueError(f"balance_weight must be >= 0, got {balance_weight!r}")
        if prior_mix not in PRIOR_MIXES:
            raise ValueError(f"prior_mix must be one of {PRIOR_MIXES}, got {prior_mix!r}")
        self.d_in, self.n_down, self.n_up, self.n_clusters = d_in, n_down, n_up, n_clusters
        self.top_k = None if top_k is None or top_k == n_pairs else top_k
        self.balance_weight = float(balance_weight)
        self.prior_mix = prior_mix
        self.average = False
        placement = dict(dtype=dtype, device=device)
        self.token_weight = nn.Parameter(torch.zeros(n_pairs, d_in, **placement))
        self.prior_weight = nn.Parameter(torch.empty(n_pairs, n_clusters, **placement))
        self.gate_logit = nn.Parameter(torch.zeros((), **placement))
        with torch.no_grad():
            bound = 1.0 / math.sqrt(n_clusters)
            self.prior_weight.uniform_(-bound, bound)
        # not persistent: documented as not saved (set them again after loading), and a
        # persistent buffer that is None on a fresh model breaks strict load_state_dict
        self.register_buffer("task_prior", None, persistent=False)
        self.register_buffer("calibrated", None, persistent=False)
        self.aux_loss: torch.Tensor | None = None
        self._calibration: tuple[torch.Tensor, int] | None = None

    @property
    def n_pairs(self) -> int:
        """``r1 * r2``."""
        return self.n_down * self.n_up

    @property
    def gate(self) -> torch.Tensor:
        """``g = sigmoid(gate_logit)``, the prior's share (0-d)."""
        return torch.sigmoid(self.gate_logit)

    # ---------------------------------------------------------------------------------- prior

    @torch.no_grad()
    def set_task_prior(self, table: torch.Tensor | None) -> None:
        """Register the per-task prior ``(n_tasks, k)`` used when a call gives task ids but no prior."""
        if table is None:
            self.task_prior = None
            return
        if not isinstance(table, torch.Tensor) or table.dim() != 2 or table.shape[1] != self.n_clusters:
            shape = tuple(table.shape) if isinstance(table, torch.Tensor) else type(table).__name__
            raise ValueError(f"the task prior must be (n_tasks, k={self.n_clusters}) (trex_n_clusters), got {shape}")
        self.task_prior = table.detach().to(device=self.token_weight.device, dtype=self.token_weight.dtype).clone()

    def prior_rows(
        self, semantic_prior: torch.Tensor | None, task_ids: TaskIds | None
    ) -> torch.Tensor | None:
        """The prior rows of a call: ``(batch, k)``, ``(1, k)`` (one task), or ``None`` (token router alone).

        An explicit ``semantic_prior`` wins; else the task table's rows for ``task_ids``.
        """
        if semantic_prior is not None:
            if semantic_prior.dim() != 2 or semantic_prior.shape[1] != self.n_clusters:
                raise ValueError(
                    f"semantic_prior must be (batch, k={self.n_clusters}) (trex_n_clusters), "
                    f"got {tuple(semantic_prior.shape)}"
                )
            return semantic_prior.to(self.token_weight.dtype)
        table = self.task_prior
        if table is None:
            return None
        if task_ids is None:
            if table.shape[0] != 1:
                raise ValueError(
                    f"a task prior of {table.shape[0]} tasks is set but the call has no task_ids: call "
                    "model(..., task_ids=...) or pass semantic_prior=(batch, k)"
                )
            return table
        if isinstance(task_ids, int) or task_ids.dim() == 0:
            return task_rows(table, task_ids).unsqueeze(0)
        return table[task_ids]

    # -------------------------------------------------------------------------------- routing

    def mix(self, token_logits: torch.Tensor, prior_logits: torch.Tensor | None) -> torch.Tensor:
        """Routing weights from token logits ``(..., e)`` and prior logits broadcastable to them."""
        if prior_logits is None:
            return token_logits.softmax(-1)
        gate = self.gate.to(token_logits.dtype)
        if self.prior_mix == "weights":
            return (1 - gate) * token_logits.softmax(-1) + gate * prior_logits.softmax(-1)
        return ((1 - gate) * token_logits + gate * prior_logits).softmax(-1)

    def _route(
        self, token_logits: torch.Tensor, prior: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(weights, probs, dispatch)``: the mixed and top-k-cut weights ``(b, ..., e)``, the mixed
        weights before the cut, and the 0/1 top-k mask (``None`` without top-k)."""
        if self.average:
            weights = token_logits.new_full(token_logits.shape, 1.0 / self.n_pairs)
            return weights, weights, None
        prior_logits = None
        if prior is not None:
            prior_logits = prior @ self.prior_weight.T.to(prior.dtype)  # b k, e k -> b e
            if token_logits.dim() > 2:
                prior_logits = prior_logits.reshape(
                    prior_logits.shape[0], *([1] * (token_logits.dim() - 2)), self.n_pairs
                )
        probs = self.mix(token_logits, prior_logits)
        if self.top_k is None:
            return probs, probs, None
        top, index = probs.topk(self.top_k, dim=-1)
        weights = torch.zeros_like(probs).scatter(-1, index, top / top.sum(-1, keepdim=True))
        dispatch = torch.zeros_like(probs).scatter(-1, index, 1.0)
        return weights, probs, dispatch

    def _record(self, weights: torch.Tensor, probs: torch.Tensor, dispatch: torch.Tensor | None) -> None:
        """Add to the calibration sums; store the balance loss (training, ``balance_weight > 0``)."""
        if self._calibration is not None:
            total, count = self._calibration
            flat = weights.detach().reshape(-1, self.n_pairs)
            self._calibration = (total + flat.sum(0).to(total), count + flat.shape[0])
        if self.average or not (self.training and self.balance_weight > 0 and torch.is_grad_enabled()):
            return
        probs = probs.reshape(-1, self.n_pairs)
        if dispatch is None:
            dispatch = F.one_hot(probs.argmax(-1), self.n_pairs).to(probs.dtype)
        self.aux_loss = switch_balance_loss(probs, dispatch.reshape(-1, self.n_pairs))

    def routing_weights(
        self, x: torch.Tensor, semantic_prior: torch.Tensor | None = None, task_ids: TaskIds | None = None
    ) -> torch.Tensor:
        """``R (b, ..., r1*r2)`` for the tokens ``x (b, ..., d_in)``, pair ``e = i * r2 + j`` (records nothing)."""
        token_logits = x.to(self.token_weight.dtype) @ self.token_weight.T
        return self._route(token_logits, self.prior_rows(semantic_prior, task_ids))[0]

    def token_delta(
        self,
        x: torch.Tensor,
        bank: ExpertBank,
        task_ids: TaskIds | None = None,
        semantic_prior: torch.Tensor | None = None,
        routing_input: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``delta(x) = sum_ij R_ij(x) b_j (a_i . x)`` (unscaled): ``(b, ..., d_in) -> (b, ..., d_out)``.

        ``routing_input`` (same shape as ``x``) is what the router reads when it differs from the
        projected ``x``: the layer passes the clean input there and the dropped-out one as ``x``,
        so routing is the same in training and eval (dropout acts on ``a_i . x`` only, as in the
        reference code). Without it, or when it is ``x`` itself, one matmul gives both the ``r1``
        projections ``x A`` and the token logits ``x W_r^T``; then ``g = sum_i R_ij h_i`` and
        ``g B``. The largest intermediate is ``(b, ..., r1 * r2)``.
        """
        down, up = bank.vectors()  # (d_in, r1), (r2, d_out)
        prior = self.prior_rows(semantic_prior, task_ids)
        if prior is not None and x.dim() < 2:
            raise ValueError(f"a semantic prior needs a batch axis on x, got shape {tuple(x.shape)}")
        if routing_input is None or routing_input is x:
            x = x.to(down.dtype)
            fused = x @ torch.cat([down, self.token_weight.T.to(down.dtype)], dim=1)  # ... d, d (i + e)
            h, token_logits = fused.split([self.n_down, self.n_pairs], dim=-1)
        else:
            h = x.to(down.dtype) @ down
            token_logits = routing_input.to(down.dtype) @ self.token_weight.T.to(down.dtype)
        weights, probs, dispatch = self._route(token_logits, prior)
        self._record(weights, probs, dispatch)
        weights = weights.to(down.dtype).reshape(*weights.shape[:-1], self.n_down, self.n_up)
        g = (h.unsqueeze(-1) * weights).sum(-2)  # ... i, ... i j -> ... j
        return g @ up

    # --------------------------------------------------------------------------------- export

    def start_calibration(self) -> None:
        """Accumulate the routing weights of every following call (see `finish_calibration`)."""
        self._calibration = (self.token_weight.new_zeros(self.n_pairs, dtype=torch.float64), 0)

    def finish_calibration(self) -> None:
        """Store the mean routing weights of the calls since `start_calibration` in ``calibrated``."""
        if self._calibration is None:
            raise RuntimeError("start_calibration() was not called")
        total, count = self._calibration
        self._calibration = None
        if count == 0:
            raise ValueError("no token went through the router during calibration")
        self.calibrated = (total / count).to(self.token_weight.dtype)

    @torch.no_grad()
    def averaged_weights(self, task: TaskIds | None = None) -> torch.Tensor:
        """The weights ``(r1, r2)`` of the exported LoRA.

        The calibrated mean (``calibrated``, set by `finish_calibration`) when there is one;
        else the router's weights at zero input: the token part is uniform there, so this is
        ``(1 - g) / (r1 r2) + g softmax(P s_t)`` with task ``task``'s prior row when a task prior
        is set, and uniform without one.
        """
        if self.calibrated is not None:
            return self.calibrated.reshape(self.n_down, self.n_up)
        zero = self.token_weight.new_zeros(1, self.n_pairs)
        weights = self._route(zero, self.prior_rows(None, task))[0]
        return weights.mean(0).reshape(self.n_down, self.n_up)

    @torch.no_grad()
    def averaged_matrices(self, bank: ExpertBank, task: TaskIds | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The routing-averaged LoRA of rank ``min(r1, r2)``: ``sum_ij Rbar_ij b_j a_i^T = B^T Rbar^T A^T``.

        Returns:
            ``A (d_in, r1)``, ``B (r1, d_out) = Rbar B`` when ``r1 <= r2``, else
            ``A (d_in, r2) = A Rbar``, ``B (r2, d_out)``; ``Rbar`` from `averaged_weights`.
            Unscaled (the layer's ``scaling`` is applied by the caller).
        """
        down, up = bank.vectors()
        weights = self.averaged_weights(task).to(down.dtype)
        if self.n_down <= self.n_up:
            return down, weights @ up
        return down @ weights, up

    def adapter_matrices(self, bank: ExpertBank, task_ids: TaskIds | None) -> tuple[torch.Tensor, torch.Tensor]:
        raise ValueError(
            "T-REX routes every token by its input, so it has no per-task adapter matrices; the layer calls "
            "token_delta, and export uses averaged_matrices"
        )

    def extra_repr(self) -> str:
        return (
            f"d_in={self.d_in}, r1={self.n_down}, r2={self.n_up}, k={self.n_clusters}, top_k={self.top_k}, "
            f"prior_mix={self.prior_mix!r}"
        )
