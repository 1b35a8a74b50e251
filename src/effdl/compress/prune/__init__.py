"""Pruning techniques (importing registers them)."""
from .lottery import LotteryConfig, find_ticket, lottery_history
from .magnitude import MagnitudeConfig, prune_to
from .sparse_training import SparseTrainingConfig

Magnitude = MagnitudeConfig
Lottery = LotteryConfig
SparseTraining = SparseTrainingConfig
__all__ = [
    "Lottery", "LotteryConfig", "Magnitude", "MagnitudeConfig", "SparseTraining", "SparseTrainingConfig",
    "find_ticket", "lottery_history", "prune_to",
]
