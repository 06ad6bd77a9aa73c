"""Arrow routing (Ostapenko et al., 2024; microsoft/mttl): route every token to a library's experts
with no training, by the input direction each expert changes most.

Expert ``e`` of a layer is a skill ``A_e (d_in, r)``, ``B_e (r, d_out)``; its update is
``dW_e = A_e B_e (d_in, d_out)`` (``x dW_e``). Its prototype ``v_e`` (``d_in``) is the top left
singular vector of ``dW_e``: the unit input direction whose image is largest (mttl: the top right
singular vector of ``W = (A B)^T``; PEFT: of ``B A``, its orientation). A token ``x`` is routed by
``l_e = |<x, v_e>| / T`` (the sign of a singular vector is arbitrary, hence the absolute value);
with ``top_k`` the ``k`` largest logits are softmaxed and the others get weight 0, without it
all are. The delta mixes the experts' outputs:
``delta(x) = sum_e w_e(x) (x A_e) B_e`` (legend ``... i, s i r -> ... s r``; ``... s r, s r o -> ... o``).
"""

from __future__ import annotations

import torch

from tensoradapt.experts.base import ExpertBank
from tensoradapt.routing.base import Combiner, TaskIds

__all__ = ["ArrowRouter", "arrow_prototypes", "arrow_weights"]


@torch.no_grad()
def arrow_prototypes(down: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """Each expert's prototype: the top left singular vector of ``A_e B_e``, unit norm.

    Computed without ``dW``: ``A = Q_A R_A``, ``B^T = Q_B R_B``, ``R_A R_B^T = U S V^T``,
    ``v = Q_A U[:, 0]`` (float64). The sign is fixed so that the largest entry in magnitude is
    positive (routing reads ``|<x, v>|`` and does not depend on it). An expert whose update is
    zero gets the zero prototype (logit 0 for every token).

    Args:
        down: ``A (S, d_in, r)``; up: ``B (S, r, d_out)``.

    Returns:
        ``(S, d_in)`` in ``down``'s dtype.
    """
    if down.dim() != 3 or up.dim() != 3 or down.shape[0] != up.shape[0] or down.shape[2] != up.shape[1]:
        raise ValueError(
            f"down must be (S, d_in, r) and up (S, r, d_out), got {tuple(down.shape)} and {tuple(up.shape)}"
        )
    prototypes = []
    for a, b in zip(down.double(), up.double()):
        q_down, r_down = torch.linalg.qr(a)
        q_up, r_up = torch.linalg.qr(b.T)
        left, singular, _ = torch.linalg.svd(r_down @ r_up.T)
        if singular[0] == 0:
            prototypes.append(torch.zeros(a.shape[0], dtype=torch.float64, device=a.device))
            continue
        vector = q_down @ left[:, 0]
        vector = vector / vector.norm()
        prototypes.append(vector * torch.sign(vector[vector.abs().argmax()]))
    return torch.stack(prototypes).to(down.dtype)


def arrow_weights(
    x: torch.Tensor, prototypes: torch.Tensor, *, top_k: int | None = None, temperature: float = 1.0
) -> torch.Tensor:
    """Arrow's routing weights of every token: ``softmax(top_k(|x v^T| / T))``, zero off the top ``k``.

    Args:
        x: ``(..., d_in)``; prototypes: ``(S, d_in)``.
        top_k: experts kept per token (``None``: all); among tied logits ``torch.topk`` picks.
        temperature: ``T`` (mttl uses 1; ``sqrt(d_in)`` softens the routing).

    Returns:
        ``(..., S)``, non-negative, summing to 1 per token.
    """
    logits = (x.to(prototypes.dtype) @ prototypes.T).abs() / temperature
    if top_k is None or top_k >= prototypes.shape[0]:
        return torch.softmax(logits, dim=-1)
    values, index = logits.topk(top_k, dim=-1)
    return torch.zeros_like(logits).scatter(-1, index, torch.softmax(values, dim=-1))


class ArrowRouter(Combiner):
    """Arrow over the skills of a bank (``bank.skill_matrices()``): Poly / MHR skills, TLoRA rank
    components, or an imported LoRA library's LoRAs. Token-routed (no task ids, no training).

    Args:
        prototypes: ``(S, d_in)``, e.g. `arrow_prototypes` of the bank's skills.
        top_k: experts per token (``None``: all).
        temperature: ``T`` of the softmax.
    """

    token_routed = True

    def __init__(self, prototypes: torch.Tensor, *, top_k: int | None = None, temperature: float = 1.0) -> None:
        super().__init__()
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"top_k must be None or an integer >= 1, got {top_k!r}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        self.top_k, self.temperature = top_k, float(temperature)
        self.register_buffer("prototypes", prototypes.detach().clone(), persistent=False)

    @property
    def n_experts(self) -> int:
        return self.prototypes.shape[0]

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """`arrow_weights` of ``x (..., d_in)``: ``(..., S)``."""
        return arrow_weights(x, self.prototypes, top_k=self.top_k, temperature=self.temperature)

    def token_delta(
        self,
        x: torch.Tensor,
        bank: ExpertBank,
        task_ids: TaskIds | None = None,
        semantic_prior: torch.Tensor | None = None,
        routing_input: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``sum_e w_e(x) (x A_e) B_e`` (unscaled): ``(..., d_in) -> (..., d_out)``.

        ``routing_input`` (the clean input when ``x`` went through dropout) is what the router
        reads. ``task_ids`` and ``semantic_prior`` are not read: Arrow needs neither.
        """
        down, up = bank.skill_matrices()  # (S, i, r), (S, r, o)
        if down.shape[0] != self.n_experts:
            raise ValueError(f"the bank has {down.shape[0]} skills but the router {self.n_experts} prototypes")
        weights = self.weights(x if routing_input is None else routing_input).to(down.dtype)  # (..., S)
        projected = torch.einsum("...i,sir->...sr", x.to(down.dtype), down) * weights.unsqueeze(-1)
        return projected.flatten(-2) @ up.reshape(-1, up.shape[-1])  # (..., S r) @ (S r, o)

    def adapter_matrices(self, bank: ExpertBank, task_ids: TaskIds | None) -> tuple[torch.Tensor, torch.Tensor]:
        raise ValueError(
            "Arrow routes every token by its input, so it has no per-task adapter matrices; leave the "
            "tensoradapt.arrow.arrow_routing block to merge or export, or set a task row with arrow_task_row"
        )

    def extra_repr(self) -> str:
        return f"experts={self.n_experts}, top_k={self.top_k}, temperature={self.temperature:g}"
