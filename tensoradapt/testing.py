"""Tiny, seeded Hugging Face models for tests, benchmarks and docs (no download, no internet).

Every builder makes a randomly initialised model from a config only, with a fixed seed (the
global RNG is left as it was), dropout off, and the model in eval mode. The dims are small (16 to
64) but keep the shapes that matter: square and non-square linears, ``nn.Linear`` and GPT-2's
``Conv1D``, and every adapted dim divisible by 2 (MHR heads).

* `tiny_t5`: T5 with gated-gelu (``wi_0``, ``wi_1``, ``wo``) and ``tie_word_embeddings=False`` as
  T0 (transformers 5 still shares ``lm_head.weight`` with the embeddings in memory).
* `tiny_llama`: LLaMA with grouped-query attention (``k_proj`` / ``v_proj`` narrower).
* `tiny_bert`: BERT with a masked-LM head.
* `tiny_gpt2`: GPT-2, whose projections are ``Conv1D`` (weight ``(d_in, d_out)``).
* `t0_3b_config`: T0-3B's (T5-XL LM-adapted) config, to build on the ``meta`` device.
* `TINY_METHOD_CONFIGS`: one small `AdapterConfig` per method, and `perturb_adapters` to give
  every adapter parameter random values (fresh LoRA-style adapters output zero, which would make
  most comparisons trivially true).

Example:
    >>> from tensoradapt.testing import tiny_t5
    >>> model = tiny_t5()
    >>> model.config.d_model
    16
"""

from __future__ import annotations

import torch
from torch import nn

from tensoradapt.config import AdapterConfig

__all__ = [
    "TINY_VOCAB",
    "t0_3b_config",
    "tiny_bert",
    "tiny_gpt2",
    "tiny_llama",
    "tiny_model",
    "tiny_t5",
    "TINY_MODELS",
    "TINY_METHOD_CONFIGS",
    "tiny_method_config",
    "perturb_adapters",
    "tiny_batch",
]

#: Vocabulary size of every tiny model (ids ``0`` pad, ``1`` eos / bos in T5; any id below it is valid).
TINY_VOCAB = 64


def _build(model_class, config, seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(config)
    return model.eval()


def tiny_t5(seed: int = 0) -> nn.Module:
    """``T5ForConditionalGeneration``: d_model 16, 4 heads of 4, d_ff 32, gated-gelu, 2 + 2 layers.

    Adapted by default: ``q, k, v, o`` of ``SelfAttention`` / ``EncDecAttention`` and
    ``wi_0, wi_1, wo`` of ``DenseReluDense``: 2 * 7 + 2 * 11 = 36 linears.
    """
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(
        vocab_size=TINY_VOCAB,
        d_model=16,
        d_kv=4,
        num_heads=4,
        d_ff=32,
        num_layers=2,
        num_decoder_layers=2,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
        tie_word_embeddings=False,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
        # T5 draws lm_head with std 1 (logits up to +-12 at d_model 16); half of every init std keeps
        # the logits O(1) (std ~1),
        # so a test's tolerance means the same on every BLAS kernel and thread count.
        initializer_factor=0.5,
    )
    return _build(T5ForConditionalGeneration, config, seed)


def tiny_llama(seed: int = 0) -> nn.Module:
    """``LlamaForCausalLM``: hidden 16, 4 heads (2 key/value heads) of 4, intermediate 32, 2 layers,
    ``lm_head`` not tied to the embeddings.

    Adapted by default: ``q/k/v/o_proj`` and ``gate/up/down_proj``: 2 * 7 = 14 linears.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=TINY_VOCAB,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        attention_dropout=0.0,
        tie_word_embeddings=False,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return _build(LlamaForCausalLM, config, seed)


def tiny_bert(seed: int = 0) -> nn.Module:
    """``BertForMaskedLM``: hidden 16, 4 heads, intermediate 32, 2 layers.

    Adapted by default: ``query/key/value``, ``attention.output.dense``, ``intermediate.dense`` and
    ``output.dense``: 2 * 6 = 12 linears.
    """
    from transformers import BertConfig, BertForMaskedLM

    config = BertConfig(
        vocab_size=TINY_VOCAB,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=32,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=0,
    )
    return _build(BertForMaskedLM, config, seed)


def tiny_gpt2(seed: int = 0) -> nn.Module:
    """``GPT2LMHeadModel``: n_embd 16, 4 heads, 2 layers; its projections are ``Conv1D``.

    Adapted by default: ``attn.c_attn`` (16 -> 48), ``attn.c_proj``, ``mlp.c_fc`` (16 -> 64),
    ``mlp.c_proj``: 2 * 4 = 8 Conv1Ds. ``lm_head`` (an ``nn.Linear``) shares its weight with ``wte``.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=TINY_VOCAB,
        n_embd=16,
        n_layer=2,
        n_head=4,
        n_positions=64,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    return _build(GPT2LMHeadModel, config, seed)


#: ``{name: builder}`` of the tiny models, for table-driven tests.
TINY_MODELS = {"t5": tiny_t5, "llama": tiny_llama, "bert": tiny_bert, "gpt2": tiny_gpt2}


def tiny_model(name: str, seed: int = 0) -> nn.Module:
    """The tiny model ``name`` (a key of `TINY_MODELS`)."""
    if name not in TINY_MODELS:
        raise ValueError(f"name={name!r} is not a tiny model; choose one of {sorted(TINY_MODELS)}")
    return TINY_MODELS[name](seed)


def t0_3b_config():
    """T0-3B's ``T5Config``: d_model 2048, 32 heads of 64, d_ff 5120, gated-gelu, 24 + 24 layers,
    vocab 32128, ``tie_word_embeddings=False``. Build it on the ``meta`` device to count shapes without memory::

        with torch.device("meta"):
            model = T5ForConditionalGeneration(t0_3b_config())
    """
    from transformers import T5Config

    return T5Config(
        vocab_size=32128,
        d_model=2048,
        d_kv=64,
        num_heads=32,
        d_ff=5120,
        num_layers=24,
        num_decoder_layers=24,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        dropout_rate=0.1,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )


def tiny_batch(model: nn.Module, batch: int = 4, length: int = 5, seed: int = 0) -> dict[str, torch.Tensor]:
    """Seeded forward kwargs for a tiny model: ``input_ids (batch, length)`` of ids in ``[3, vocab)``
    (no pad / eos / bos), plus ``decoder_input_ids (batch, length - 1)`` for encoder-decoders."""
    generator = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    inputs = {"input_ids": torch.randint(3, vocab, (batch, length), generator=generator)}
    if model.config.is_encoder_decoder:
        inputs["decoder_input_ids"] = torch.randint(3, vocab, (batch, max(length - 1, 1)), generator=generator)
    return inputs


#: Small settings per method for the tiny models: rank 2, 3 tasks, 3 skills / tensor ranks, 2 MHR
#: heads, order 2; T-REX 2 x 3 pairs and a 4-cluster prior. One line per method; a new method is one more line.
TINY_METHOD_CONFIGS: dict[str, dict] = {
    "lora": dict(lora_rank=2),
    "tlora": dict(lora_rank=2, tensor_rank=2, order=2),
    "poly": dict(lora_rank=2, n_skills=3, n_tasks=3),
    "mhr": dict(lora_rank=2, n_skills=3, n_heads=2, n_tasks=3),
    "tensorpoly_i": dict(lora_rank=2, tensor_rank=3, order=2, n_tasks=3),
    "tensorpoly_ii": dict(lora_rank=2, tensor_rank=3, order=2, n_tasks=3),
    "trex": dict(trex_down=2, trex_up=3, trex_n_clusters=4, n_tasks=3),
}


def tiny_method_config(method: str, **overrides) -> AdapterConfig:
    """``AdapterConfig(method=method, **TINY_METHOD_CONFIGS[method], **overrides)``."""
    if method not in TINY_METHOD_CONFIGS:
        raise ValueError(f"method={method!r} has no tiny config; choose one of {sorted(TINY_METHOD_CONFIGS)}")
    return AdapterConfig(method=method, **{**TINY_METHOD_CONFIGS[method], **overrides})


@torch.no_grad()
def perturb_adapters(
    model: nn.Module, seed: int = 0, *, std: float = 0.5, leaf_std: float = 1.0, routing_std: float = 3.0
) -> nn.Module:
    """Overwrite every adapter parameter with seeded normal noise, in place.

    Dense expert parameters get ``N(0, std^2)``, entangled-tensor leaves ``N(0, leaf_std^2)``
    (their products would otherwise be tiny), routing parameters ``N(0, routing_std^2)`` (tasks
    then route clearly differently). The global RNG is left as it was.

    Returns:
        ``model``.
    """
    from tensoradapt.model import adapted_layers

    generator = torch.Generator().manual_seed(seed)
    for layer in adapted_layers(model).values():
        for part, module in (("modules", layer.bank), ("routing", layer.combiner)):
            for name, parameter in module.named_parameters():
                if part == "routing":
                    scale = routing_std
                else:
                    scale = leaf_std if name.rpartition(".")[2] == "leaves" else std
                noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float32) * scale
                parameter.copy_(noise.to(parameter.dtype))
    return model
