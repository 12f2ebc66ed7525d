"""The paper's protocol as one command: datasets x shots x seeds x methods from a YAML config, resumable.

    schema.py   the config: one key table (validation, defaults, the resolved copy, docs/experiment-config.md)
    plan.py     every run of the config and the result file it writes
    runner.py   run the unfinished ones (claimed across processes), then the report
"""
from .plan import PlannedRun, plan_runs
from .runner import ExperimentResult, run_experiment
from .schema import (AblationEntry, BackboneEntry, DatasetEntry, ExperimentConfig, MethodEntry, load_config,
                     parse_config)

__all__ = ["ExperimentConfig", "DatasetEntry", "MethodEntry", "BackboneEntry", "AblationEntry", "PlannedRun",
           "ExperimentResult", "load_config", "parse_config", "plan_runs", "run_experiment"]
