"""asrperf: measured, reproducible answers to "which ASR model and configuration should I run here?"."""

__version__ = "0.1.0"
