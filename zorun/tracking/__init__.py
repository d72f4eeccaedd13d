"""Run outputs: metrics.jsonl, summary.json and the rich console."""

from zorun.tracking.console import Console
from zorun.tracking.files import MetricsWriter, write_json_atomic

__all__ = ["Console", "MetricsWriter", "write_json_atomic"]
