"""deepfuse: fused GPU kernels (Triton and CUDA C++) behind drop-in torch.nn layers.

import deepfuse
y = deepfuse.ops.linear_act(x, w, b, "gelu")             # automatic backend
layer = deepfuse.nn.FusedLinear(512, 2048, activation="gelu")
with deepfuse.use_backend("triton"): ...
print(deepfuse.explain("linear_act", x, w, b, "gelu"))
report = deepfuse.patch(model)   # swap deepfuse's fused layers into an existing model, in place; print(report)
deepfuse.unpatch(model)          # plain torch modules again (same parameters, same state_dict)
"""

from deepfuse import nn, ops
from deepfuse.backend import BackendUnavailableError, available_backends, explain, use_backend
from deepfuse.patch import patch, unpatch
from deepfuse.profile import profile

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailableError",
    "available_backends",
    "explain",
    "nn",
    "ops",
    "patch",
    "profile",
    "unpatch",
    "use_backend",
    "__version__",
]
