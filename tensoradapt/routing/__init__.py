"""Layer 3, the combiners: how a task (or a token) mixes a bank's experts.

* `SumCombiner`: no routing (LoRA, TLoRA).
* `LinearRouter`: Poly. `MultiHeadRouter`: MHR.
* `RankRouter`: TensorPoly-I. `OrderRouter`: TensorPoly-II.
* `TokenRouter`: T-REX (per-token routing over rank-one pairs, with a semantic prior from
  `tensoradapt.routing.semantic_prior`, imported on demand).
* `ArrowRouter`: Arrow (zero-shot per-token routing over any bank's skills, `tensoradapt.arrow`).
"""

from tensoradapt.routing.arrow import ArrowRouter, arrow_prototypes, arrow_weights
from tensoradapt.routing.base import (
    ROUTING_NORMALIZATIONS,
    Combiner,
    TaskIds,
    TaskRouter,
    normalized_sigmoid_weights,
    task_rows,
)
from tensoradapt.routing.fixed import SumCombiner
from tensoradapt.routing.linear import LinearRouter, RankRouter, mix_skills
from tensoradapt.routing.multihead import MultiHeadRouter, check_heads_divide
from tensoradapt.routing.order import OrderRouter
from tensoradapt.routing.token import TokenRouter, switch_balance_loss

__all__ = [
    "ROUTING_NORMALIZATIONS",
    "ArrowRouter",
    "Combiner",
    "LinearRouter",
    "MultiHeadRouter",
    "OrderRouter",
    "RankRouter",
    "SumCombiner",
    "TaskIds",
    "TaskRouter",
    "TokenRouter",
    "arrow_prototypes",
    "arrow_weights",
    "check_heads_divide",
    "mix_skills",
    "normalized_sigmoid_weights",
    "switch_balance_loss",
    "task_rows",
]
