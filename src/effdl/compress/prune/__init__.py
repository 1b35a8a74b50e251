"""Pruning techniques (importing registers them)."""
from .distribution import allocate, prunable_layer_names, sensitivity_allocation, sensitivity_analysis
from .granularity import Granularity
from .heads import HeadPruneConfig, head_counts, head_sites
from .lottery import LotteryConfig, find_ticket, lottery_history
from .magnitude import MagnitudeConfig, prune_to
from .sparse_training import SparseTrainingConfig
from .sparsegpt import SparseGPTConfig
from .structured import ChannelPruneConfig, LayerPruneConfig, rebuild, structure_of
from .wanda import WandaConfig
from .weights import WeightPruneConfig, layer_sparsity

Magnitude = MagnitudeConfig
Weights = WeightPruneConfig
Lottery = LotteryConfig
SparseTraining = SparseTrainingConfig
Channels = ChannelPruneConfig
Layers = LayerPruneConfig
Heads = HeadPruneConfig
Wanda = WandaConfig
SparseGPT = SparseGPTConfig
__all__ = [
    "ChannelPruneConfig", "Channels", "LayerPruneConfig", "Layers", "rebuild", "structure_of",
    "Granularity", "HeadPruneConfig", "Heads", "head_counts", "head_sites", "Lottery", "LotteryConfig", "Magnitude", "MagnitudeConfig", "SparseTraining",
    "SparseTrainingConfig", "WeightPruneConfig", "Weights", "allocate", "find_ticket", "layer_sparsity",
    "lottery_history", "prunable_layer_names", "prune_to", "sensitivity_allocation", "sensitivity_analysis",
    "SparseGPT", "SparseGPTConfig", "Wanda", "WandaConfig",
]
