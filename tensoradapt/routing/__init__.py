"""Layer 3, the combiners: how a task (or a token) mixes a bank's experts.

* `SumCombiner`: no routing (LoRA, TLoRA).
* `LinearRouter`: Poly. `MultiHeadRouter`: MHR.
* `RankRouter`: TensorPoly-I. `OrderRouter`: TensorPoly-II.
* `TokenRouter`: T-REX (per-token routing over rank-one pairs, with a semantic prior from
  `tensoradapt.routing.semantic_prior`, imported on demand).
"""

from tensoradapt.routing.base import ROUTING_NORMALIZATIONS, Combiner, TaskIds, TaskRouter, normalized_sigmoid_weights
from tensoradapt.routing.fixed import SumCombiner
from tensoradapt.routing.linear import LinearRouter, RankRouter, mix_skills
from tensoradapt.routing.multihead import MultiHeadRouter, check_heads_divide
from tensoradapt.routing.order import OrderRouter
from tensoradapt.routing.token import TokenRouter, switch_balance_loss

__all__ = [
    "ROUTING_NORMALIZATIONS",
    "Combiner",
    "LinearRouter",
    "MultiHeadRouter",
    "OrderRouter",
    "RankRouter",
    "SumCombiner",
    "TaskIds",
    "TaskRouter",
    "TokenRouter",
    "check_heads_divide",
    "mix_skills",
    "normalized_sigmoid_weights",
    "switch_balance_loss",
]
