"""Which modules `inject` replaces: built-in patterns per model family, custom regexes, and errors."""

from collections import Counter

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from tensoradapt import AdaptedLinear, AdapterConfig, adapted_layers, inject
from tensoradapt.targets import DEFAULT_TARGETS
from tensoradapt.testing import TINY_METHOD_CONFIGS, t0_3b_config, tiny_method_config, tiny_model

METHODS = tuple(TINY_METHOD_CONFIGS)


def _expected_default_targets(name: str, model: nn.Module) -> set[str]:
    """The default targets, derived from module types and parents (not from the library's regex)."""
    modules = dict(model.named_modules())

    def parent_type(module_name: str) -> str:
        return type(modules[module_name.rpartition(".")[0]]).__name__

    expected = set()
    for module_name, module in modules.items():
        leaf = module_name.rpartition(".")[2]
        if name == "t5" and isinstance(module, nn.Linear):
            if parent_type(module_name) == "T5Attention" and leaf in {"q", "k", "v", "o"}:
                expected.add(module_name)
            if parent_type(module_name) == "T5DenseGatedActDense" and leaf in {"wi_0", "wi_1", "wo"}:
                expected.add(module_name)
        elif name == "llama" and isinstance(module, nn.Linear):
            if parent_type(module_name) in {"LlamaAttention", "LlamaMLP"}:
                expected.add(module_name)
        elif name == "bert" and isinstance(module, nn.Linear):
            if parent_type(module_name) in {"BertSelfAttention", "BertSelfOutput", "BertIntermediate", "BertOutput"}:
                expected.add(module_name)
        elif name == "gpt2" and isinstance(module, Conv1D):
            expected.add(module_name)
    return expected


#: Adapted linears of the tiny models with the built-in patterns (see tensoradapt.testing).
DEFAULT_COUNTS = {"t5": 2 * 7 + 2 * 11, "llama": 2 * 7, "bert": 2 * 6, "gpt2": 2 * 4}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("model_name", sorted(DEFAULT_COUNTS))
def test_default_targets_replace_exactly_the_expected_modules(model_name, method):
    model = tiny_model(model_name)
    expected = _expected_default_targets(model_name, model)
    originals = {name: model.get_submodule(name) for name in expected}
    inject(model, tiny_method_config(method))
    layers = adapted_layers(model)
    assert set(layers) == expected
    assert len(layers) == DEFAULT_COUNTS[model_name]
    for name, layer in layers.items():
        assert layer.base is originals[name], f"{name} must wrap the original module"
    # No AdaptedLinear nests inside another one, and every other module kept its type.
    assert not any(isinstance(m, AdaptedLinear) for layer in layers.values() for m in layer.base.modules())
    assert all(not p.requires_grad for layer in layers.values() for p in layer.base.parameters())


def test_t5_default_targets_are_the_t_few_set():
    model = tiny_model("t5")
    inject(model, AdapterConfig())
    leaves = Counter(name.rsplit(".", 1)[1] for name in adapted_layers(model))
    # 2 encoder layers (self-attention) + 2 decoder layers (self + cross attention).
    assert leaves == {"q": 6, "k": 6, "v": 6, "o": 6, "wi_0": 4, "wi_1": 4, "wo": 4}
    assert sum(".EncDecAttention." in name for name in adapted_layers(model)) == 8
    assert not any("lm_head" in name or "relative_attention_bias" in name for name in adapted_layers(model))


@pytest.mark.parametrize("method", METHODS)
def test_t0_3b_on_meta_device_adapts_432_linears(method):
    from transformers import T5ForConditionalGeneration

    with torch.device("meta"):
        model = T5ForConditionalGeneration(t0_3b_config())
    overrides = {"n_heads": 4} if method == "mhr" else {}
    inject(model, tiny_method_config(method, **overrides))
    layers = adapted_layers(model)
    shapes = Counter((layer.d_in, layer.d_out) for layer in layers.values())
    assert len(layers) == 432
    assert shapes == {(2048, 2048): 288, (2048, 5120): 96, (5120, 2048): 48}
    attention = [n for n in layers if ".SelfAttention." in n or ".EncDecAttention." in n]
    assert len(attention) == 288
    assert all(p.device.type == "meta" for layer in layers.values() for p in layer.bank.parameters())


@pytest.mark.parametrize(
    ("model_name", "pattern", "expected"),
    [
        ("t5", r"decoder\.block\.\d+\.layer\.1\.EncDecAttention\.(q|v)", 4),
        ("t5", r".*DenseReluDense\.wo", 4),
        ("llama", r"model\.layers\.1\.self_attn\.[qv]_proj", 2),
        ("bert", r".*attention\.self\.value", 2),
        ("gpt2", r"transformer\.h\.0\.(attn\.c_attn|mlp\.c_fc)", 2),
        ("gpt2", r"lm_head", 1),  # a plain nn.Linear in a Conv1D model
    ],
)
def test_custom_regex_selects_exactly_the_full_matches(model_name, pattern, expected):
    import re

    model = tiny_model(model_name)
    wanted = {n for n, m in model.named_modules() if re.fullmatch(pattern, n)}
    inject(model, AdapterConfig(target_modules=pattern))
    assert set(adapted_layers(model)) == wanted
    assert len(wanted) == expected


@pytest.mark.parametrize("pattern", [r"q", r"encoder\.block\.0\.layer\.0\.SelfAttention\.qq", r".*nothing_like_this"])
def test_pattern_matching_nothing_raises_naming_target_modules(pattern):
    model = tiny_model("t5")
    with pytest.raises(ValueError, match="target_modules") as error:
        inject(model, AdapterConfig(target_modules=pattern))
    assert "matches no module" in str(error.value)
    assert not adapted_layers(model), "a failed inject must leave the model untouched"


@pytest.mark.parametrize(
    ("model_name", "pattern"),
    [("t5", r".*SelfAttention"), ("t5", r".*layer_norm"), ("llama", r".*\.mlp"), ("gpt2", r".*\.ln_1")],
)
def test_pattern_matching_only_non_linear_modules_raises(model_name, pattern):
    model = tiny_model(model_name)
    with pytest.raises(ValueError, match="target_modules") as error:
        inject(model, AdapterConfig(target_modules=pattern))
    assert "not nn.Linear" in str(error.value)
    assert not adapted_layers(model)
    assert all(p.requires_grad for p in model.parameters()), "a failed inject must not freeze the model"


def test_invalid_regex_raises_naming_target_modules():
    with pytest.raises(ValueError, match="target_modules.*not a valid regex"):
        inject(tiny_model("gpt2"), AdapterConfig(target_modules=r".*(attn"))


@pytest.mark.parametrize("method", METHODS)
def test_injecting_twice_raises(method):
    model = inject(tiny_model("gpt2"), tiny_method_config(method))
    before = set(adapted_layers(model))
    with pytest.raises(ValueError, match="already has tensoradapt adapters"):
        inject(model, tiny_method_config(method))
    assert set(adapted_layers(model)) == before


class _UnknownNet(nn.Module):
    class config:  # noqa: N801 - mimics a Hugging Face config attribute
        model_type = "unknownnet"

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 4)

    def forward(self, x):
        return self.proj(x)


@pytest.mark.parametrize("model", [_UnknownNet(), nn.Sequential(nn.Linear(4, 4))], ids=["unknown_type", "no_config"])
def test_unknown_model_type_without_target_modules_names_the_fix(model):
    with pytest.raises(ValueError, match="no built-in target_modules") as error:
        inject(model, AdapterConfig())
    assert "AdapterConfig(target_modules=" in str(error.value)


def test_unknown_model_type_with_target_modules_works():
    model = _UnknownNet()
    inject(model, AdapterConfig(target_modules="proj"))
    assert set(adapted_layers(model)) == {"proj"}
    assert model(torch.ones(2, 4)).shape == (2, 4)


@pytest.mark.parametrize("model_type", sorted(DEFAULT_TARGETS))
def test_every_builtin_pattern_is_a_valid_regex(model_type):
    import re

    re.compile(DEFAULT_TARGETS[model_type])
