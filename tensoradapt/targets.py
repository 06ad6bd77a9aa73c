"""Built-in target-module patterns per model family, and their matching."""

from __future__ import annotations

import re

from torch import nn

__all__ = ["DEFAULT_TARGETS", "default_target_pattern", "find_targets"]

#: Regexes (full match on module names) of the linears adapted by default, per ``config.model_type``.
DEFAULT_TARGETS: dict[str, str] = {
    # T5 / T0 / mT5: the T-Few / mttl convention (PAPER_FACTS section 1).
    "t5": r".*(SelfAttention|EncDecAttention|DenseReluDense)\.(q|k|v|o|wi|wi_0|wi_1|wo)",
    "mt5": r".*(SelfAttention|EncDecAttention|DenseReluDense)\.(q|k|v|o|wi|wi_0|wi_1|wo)",
    "umt5": r".*(SelfAttention|EncDecAttention|DenseReluDense)\.(q|k|v|o|wi|wi_0|wi_1|wo)",
    # LLaMA-style decoders: attention and gated MLP projections.
    "llama": r".*(self_attn\.(q_proj|k_proj|v_proj|o_proj)|mlp\.(gate_proj|up_proj|down_proj))",
    "mistral": r".*(self_attn\.(q_proj|k_proj|v_proj|o_proj)|mlp\.(gate_proj|up_proj|down_proj))",
    "qwen2": r".*(self_attn\.(q_proj|k_proj|v_proj|o_proj)|mlp\.(gate_proj|up_proj|down_proj))",
    "gemma": r".*(self_attn\.(q_proj|k_proj|v_proj|o_proj)|mlp\.(gate_proj|up_proj|down_proj))",
    # BERT-style encoders: self-attention, its output projection and the FFN.
    "bert": r".*(attention\.self\.(query|key|value)|attention\.output\.dense|intermediate\.dense|layer\.\d+\.output\.dense)",
    "roberta": r".*(attention\.self\.(query|key|value)|attention\.output\.dense|intermediate\.dense|layer\.\d+\.output\.dense)",
    # GPT-2 (Conv1D layers).
    "gpt2": r".*(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)",
}


def default_target_pattern(model: nn.Module) -> str:
    """The built-in pattern for ``model.config.model_type``; ``ValueError`` naming the fix if none."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in DEFAULT_TARGETS:
        raise ValueError(
            f"no built-in target_modules for model_type={model_type!r} (known: {sorted(DEFAULT_TARGETS)}); "
            "pass AdapterConfig(target_modules=r'<regex over module names>')"
        )
    return DEFAULT_TARGETS[model_type]


def find_targets(model: nn.Module, pattern: str, accepts) -> list[str]:
    """Names of the modules whose name fully matches ``pattern`` and that ``accepts(module)``.

    Raises:
        ValueError: the pattern matches no module, or only modules that cannot be adapted
            (their names and types are listed).
    """
    try:
        regex = re.compile(pattern)
    except re.error as error:
        raise ValueError(f"target_modules={pattern!r} is not a valid regex: {error}") from error
    matched = [(name, module) for name, module in model.named_modules() if name and regex.fullmatch(name)]
    if not matched:
        sample = [name for name, _ in model.named_modules() if name][:8]
        raise ValueError(
            f"target_modules={pattern!r} matches no module of {type(model).__name__}; module names look like "
            f"{sample}; the pattern must match a whole name"
        )
    names = [name for name, module in matched if accepts(module)]
    if not names:
        kinds = sorted({f"{name}: {type(module).__name__}" for name, module in matched})[:5]
        raise ValueError(
            f"target_modules={pattern!r} matches only modules that are not nn.Linear / Conv1D ({kinds}); "
            "point it at the linear layers inside them"
        )
    return names
