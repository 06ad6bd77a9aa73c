"""T0 recipes: the T-Few few-shot protocol on the T0 held-out tasks, shared by every method.

Four inner packages, each importing only from the ones before it, then the run itself:

* `t0_recipes.data`: task registry (`tasks`), prompt templates (`templates`), local readers and
  task ids (`rows`), the hub (`hub`), the pre-training mixture (`mixture`), a cluster held out
  of it (`holdout`), tokenisation (`collate`).
* `t0_recipes.scoring`: the two scorers of one protocol, the only place a T5 and an encoder
  differ: seq2seq likelihood (`seq2seq`) and rank classification (`rank`).
* `t0_recipes.training`: the loop (`loop`), optimiser (`optim`), run state (`run_state`),
  pre-training (`pretrain`), few-shot adaptation (`fewshot`), T-REX's task prior (`trex_prior`).
* `t0_recipes.reporting`: medians, means, JSON + Markdown (Table-1 layout) + PNG.
* the run: `presets` (models and hyper-parameters), `methods` (adapter sizes, modes),
  `protocol` (tasks x seeds), `cli` and `pipeline` (arguments and the stages in order); one
  script per method over them (`lora`, `tlora`, `poly`, `mhr`, `tensorpoly_i`,
  `tensorpoly_ii`, `trex`) and `zero_shot`.
"""

from t0_recipes.data.collate import MultipleChoiceCollator
from t0_recipes.data.rows import Example, TaskIndex
from t0_recipes.scoring.rank import EvalResult, evaluate_examples
from t0_recipes.scoring.seq2seq import LossOutput, LossWeights, choice_token_losses, tfew_loss
from t0_recipes.presets import PRESETS, ModelUnavailableError, get_preset, load_model
from t0_recipes.data.tasks import FEWSHOT_SEEDS, HELD_OUT, TASKS, get_task
from t0_recipes.data.templates import TEMPLATES, templates_for

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
