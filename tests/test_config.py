"""AdapterConfig: the library's defaults, the paper's settings one call away, T-REX's scale, old files."""

from __future__ import annotations

import dataclasses

import pytest

from tensoradapt.config import METHODS, AdapterConfig


def test_defaults_are_the_librarys_and_paper_defaults_the_papers() -> None:
    config = AdapterConfig(method="tensorpoly_i")
    assert config.init == "matched" and config.routing_normalization is None
    assert config.resolved_routing_normalization == "mean"
    paper = AdapterConfig.paper_defaults(method="tensorpoly_i", tensor_rank=8)
    assert paper.init == "reference" and paper.resolved_routing_normalization == "sum" and paper.tensor_rank == 8
    # every other field is the plain default; overrides win
    assert dataclasses.replace(paper, init="matched", routing_normalization=None) == AdapterConfig(
        method="tensorpoly_i", tensor_rank=8
    )
    assert AdapterConfig.paper_defaults(init="lora").init == "lora"


@pytest.mark.parametrize("method", METHODS)
def test_routing_normalization_resolves_per_method(method: str) -> None:
    expected = "mean" if method in ("tensorpoly_i", "tensorpoly_ii") else "sum"
    assert AdapterConfig(method=method).resolved_routing_normalization == expected
    assert AdapterConfig(method=method, routing_normalization="sum").resolved_routing_normalization == "sum"


def test_unknown_routing_normalization_names_the_field() -> None:
    with pytest.raises(ValueError, match="routing_normalization"):
        AdapterConfig(routing_normalization="softmax")


@pytest.mark.parametrize("lora_rank", [1, 4, 16])
@pytest.mark.parametrize("lora_alpha", [None, 2.0])
def test_trex_scale_is_lora_alpha_whatever_lora_rank(lora_rank: int, lora_alpha) -> None:
    """T-REX's experts are rank one: a lora_rank copied from another method no longer divides its delta."""
    config = AdapterConfig(method="trex", lora_rank=lora_rank, lora_alpha=lora_alpha)
    assert config.scaling == (1.0 if lora_alpha is None else lora_alpha)
    assert AdapterConfig(method="lora", lora_rank=lora_rank, lora_alpha=lora_alpha).scaling == (
        (1.0 if lora_alpha is None else lora_alpha) / lora_rank
    )


@pytest.mark.parametrize("method", METHODS)
def test_dict_round_trip_keeps_every_field(method: str) -> None:
    config = AdapterConfig(method=method, routing_normalization="sum", init="reference")
    assert AdapterConfig.from_dict(config.to_dict()) == config


def test_a_file_from_before_routing_normalization_computes_what_it_did() -> None:
    """Written by ``to_dict`` before the field existed: sum-normalised routing, T-REX at alpha / rank."""
    old = AdapterConfig(method="tensorpoly_ii", tensor_rank=8).to_dict()
    del old["routing_normalization"]
    assert AdapterConfig.from_dict(old).resolved_routing_normalization == "sum"
    old_trex = AdapterConfig(method="trex", lora_rank=16, lora_alpha=8.0).to_dict()
    del old_trex["routing_normalization"]
    assert AdapterConfig.from_dict(old_trex).scaling == 8.0 / 16
    # a partial dict is not an old file: today's defaults
    assert AdapterConfig.from_dict({"method": "tensorpoly_i"}).resolved_routing_normalization == "mean"
