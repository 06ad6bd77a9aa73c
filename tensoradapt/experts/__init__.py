"""Layer 2, the experts: banks of LoRA, TLoRA and rank-one (T-REX) parameters."""

from tensoradapt.experts.base import ExpertBank, MatchedInit, lora_a_std, matched_init
from tensoradapt.experts.lora import LoRABank
from tensoradapt.experts.rank_one import RankOneBank
from tensoradapt.experts.tlora import TLoRABank

__all__ = ["ExpertBank", "LoRABank", "MatchedInit", "RankOneBank", "TLoRABank", "lora_a_std", "matched_init"]
