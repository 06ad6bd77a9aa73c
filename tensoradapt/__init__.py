"""tensoradapt: tensor-product adapters and mixtures of latent experts for PyTorch models.

Layers, each built on the ones before it: `tensoradapt.algebra` (entangled tensors),
`tensoradapt.experts` (LoRA / TLoRA / rank-one banks), `tensoradapt.routing`
(Poly, MHR, TensorPoly-I/II, T-REX combiners), and model surgery (`inject`, save / load,
export).

The lifecycle in one call each way, as PEFT's::

    model = tensoradapt.inject(base, tensoradapt.AdapterConfig(method="poly", n_tasks=8))
    tensoradapt.print_trainable_parameters(model)
    ...  # train with model(**batch, task_ids=t)
    tensoradapt.save_pretrained(model, "ckpt")
    model = tensoradapt.from_pretrained(BaseModel.from_pretrained(name), "ckpt")
"""

from tensoradapt.algebra import EntangledTensor, fit_leaves, leaf_size, materialize
from tensoradapt.arrow import arrow_routing, arrow_task_row
from tensoradapt.checkpoint import (
    CheckpointError,
    adapter_state_dict,
    from_pretrained,
    load_adapter,
    save_adapter,
    save_pretrained,
)
from tensoradapt.config import METHOD_LABELS, METHODS, TRAINING_MODES, AdapterConfig
from tensoradapt.export import export_peft_lora, task_lora_matrices
from tensoradapt.layers import AdaptedLinear
from tensoradapt.library import LibraryExport, LibraryImport, export_lora_library, from_lora_library
from tensoradapt.model import (
    adapted_layers,
    adapter_config,
    disable_adapters,
    inject,
    merge,
    unmerge,
    use_routing,
)
from tensoradapt.peft_lora import LoraLibraryError
from tensoradapt.trainable import (
    add_task,
    count_parameters,
    parameter_groups,
    print_trainable_parameters,
    reset_routing,
    set_training_mode,
    trainable_parameters,
)

__all__ = [
    "METHOD_LABELS",
    "METHODS",
    "TRAINING_MODES",
    "AdaptedLinear",
    "AdapterConfig",
    "CheckpointError",
    "EntangledTensor",
    "LibraryExport",
    "LibraryImport",
    "LoraLibraryError",
    "adapted_layers",
    "adapter_config",
    "adapter_state_dict",
    "add_task",
    "arrow_routing",
    "arrow_task_row",
    "count_parameters",
    "disable_adapters",
    "export_lora_library",
    "export_peft_lora",
    "fit_leaves",
    "from_lora_library",
    "from_pretrained",
    "inject",
    "leaf_size",
    "load_adapter",
    "materialize",
    "merge",
    "parameter_groups",
    "print_trainable_parameters",
    "reset_routing",
    "save_adapter",
    "save_pretrained",
    "set_training_mode",
    "task_lora_matrices",
    "trainable_parameters",
    "unmerge",
    "use_routing",
]
__version__ = "0.1.0"
