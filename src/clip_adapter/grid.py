"""Deprecated path: see :mod:`clip_adapter.experiment` (the command is ``clip-adapter experiment CONFIG``)."""
from ._compat import moved
from .experiment import ExperimentConfig, ExperimentResult, load_config, parse_config, plan_runs, run_experiment

moved("clip_adapter.grid", "clip_adapter.experiment")
__all__ = ["ExperimentConfig", "ExperimentResult", "load_config", "parse_config", "plan_runs", "run_experiment"]
