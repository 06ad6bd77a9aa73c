"""Layer 2, the experts: banks of LoRA, TLoRA and rank-one (T-REX) parameters."""

from tensoradapt.experts.base import ExpertBank, lora_a_std
from tensoradapt.experts.lora import LoRABank
from tensoradapt.experts.rank_one import RankOneBank
from tensoradapt.experts.tlora import TLoRABank

__all__ = ["ExpertBank", "LoRABank", "RankOneBank", "TLoRABank", "lora_a_std"]
