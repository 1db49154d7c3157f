"""Triton kernels of deepfuse (installed as ``deepfuse.kernels``): @triton.jit kernels and their launchers, no autograd.

Set ``TRITON_INTERPRET=1`` before importing these modules to run the kernels on CPU tensors.
"""
