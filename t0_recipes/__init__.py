"""T0 recipes: the T-Few few-shot protocol on the T0 held-out tasks, shared by every method.

One job per module, each importing only from the ones above it in this list:

* `t0_recipes.tasks`: held-out task registry, few-shot sizes and seeds, the paper's Table 1.
* `t0_recipes.templates`: the project's prompt templates (row -> input, choices, gold).
* `t0_recipes.data`: local readers (``--data-dir``), task ids, rendering into `Example`.
* `t0_recipes.hub`: the same rows and the P3 training mixture from the hub (fails fast offline).
* `t0_recipes.collate`: tokenize and pad examples with all their choices.
* `t0_recipes.losses`: per-choice token losses (prompt encoded once), LM, unlikelihood, MC.
* `t0_recipes.evaluate`: rank classification and accuracy.
* `t0_recipes.presets`: ``paper`` / ``tiny`` hyper-parameters and `load_model`.
* `t0_recipes.report`: medians, means, JSON + Markdown (Table-1 layout) + PNG.
* `t0_recipes.protocol`: tasks x seeds: adapt, evaluate, collect.
* `t0_recipes.methods`: each method's adapter sizes (paper / tiny) and training modes.
* `t0_recipes.mixture`: the multi-task pre-training mixture (non-held-out tasks, or P3).
* `t0_recipes.trex_prior`: T-REX's semantic prior as one row per task.
* `t0_recipes.pretrain` and `t0_recipes.adapt`: the two training stages.
* `t0_recipes.cli` and `t0_recipes.pipeline`: arguments and the stages in order; one script per
  method over them (`lora`, `tlora`, `poly`, `mhr`, `tensorpoly_i`, `tensorpoly_ii`, `trex`)
  and `t0_recipes.zero_shot`.
"""

from t0_recipes.collate import MultipleChoiceCollator
from t0_recipes.data import Example, TaskIndex
from t0_recipes.evaluate import EvalResult, evaluate_examples
from t0_recipes.losses import LossOutput, LossWeights, choice_token_losses, tfew_loss
from t0_recipes.presets import PRESETS, ModelUnavailableError, get_preset, load_model
from t0_recipes.tasks import FEWSHOT_SEEDS, HELD_OUT, TASKS, get_task
from t0_recipes.templates import TEMPLATES, templates_for

__all__ = [
    "FEWSHOT_SEEDS",
    "HELD_OUT",
    "PRESETS",
    "TASKS",
    "TEMPLATES",
    "EvalResult",
    "Example",
    "LossOutput",
    "LossWeights",
    "ModelUnavailableError",
    "MultipleChoiceCollator",
    "TaskIndex",
    "choice_token_losses",
    "evaluate_examples",
    "get_preset",
    "get_task",
    "load_model",
    "templates_for",
    "tfew_loss",
]
