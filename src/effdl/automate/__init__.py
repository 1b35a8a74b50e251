"""Automation: searches over compression recipes on Optuna (spaces from the technique configs,
samplers, pruners, hypervolume) and the storages that let several workers share one study."""
