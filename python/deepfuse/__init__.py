"""deepfuse: fused GPU kernels (Triton and CUDA C++) behind drop-in torch.nn layers.

import deepfuse
y = deepfuse.ops.linear_act(x, w, b, "gelu")             # automatic backend
layer = deepfuse.nn.FusedLinear(512, 2048, activation="gelu")
with deepfuse.use_backend("triton"): ...
print(deepfuse.explain("linear_act", x, w, b, "gelu"))
"""

from deepfuse import nn, ops
from deepfuse.backend import BackendUnavailableError, available_backends, explain, use_backend
from deepfuse.profile import profile

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailableError",
    "available_backends",
    "explain",
    "nn",
    "ops",
    "profile",
    "use_backend",
    "__version__",
]
