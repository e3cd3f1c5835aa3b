"""Benchmarks for attnseg: data set readers, protocols, metrics, the resumable runner and reports."""

from attnseg.eval.datasets import DATASETS, SegDataset, get_dataset
from attnseg.eval.protocols import Protocol
from attnseg.eval.runner import EvalConfig, run_eval

__all__ = ["DATASETS", "EvalConfig", "Protocol", "SegDataset", "get_dataset", "run_eval"]
