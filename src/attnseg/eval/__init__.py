"""Benchmarks for attnseg: data set readers, protocols, metrics, the resumable runner and reports."""

from attnseg.eval.datasets import DATASETS, SegDataset, get_dataset
from attnseg.eval.metrics import ConfusionMeter, SegScores
from attnseg.eval.protocols import Protocol
from attnseg.eval.runner import EvalConfig, run_eval

__all__ = [
    "DATASETS",
    "ConfusionMeter",
    "EvalConfig",
    "Protocol",
    "SegDataset",
    "SegScores",
    "get_dataset",
    "run_eval",
]
