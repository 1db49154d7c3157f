"""The compile gate: every Triton kernel of deepfuse.kernels, reached through the public ops with an H200's
settings, compiled ahead of time for sm_90 (no GPU needed) and checked against the H200's limits.

Run: ``python -m tests.compile_gate`` (exit status 1 on any failure). See gate.py for the checks.
"""
