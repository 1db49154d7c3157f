"""Kernel profiling: every deepfuse op is labelled (torch.profiler + NVTX ranges); profile() reports on them."""

from deepfuse.profile.labels import op_range
from deepfuse.profile.report import ProfileReport, profile

__all__ = ["ProfileReport", "op_range", "profile"]
