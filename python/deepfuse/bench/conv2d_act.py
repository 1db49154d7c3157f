"""conv2d_act benchmark: fused deepfuse kernels vs eager cuDNN (NCHW and channels_last; conv + bias, then
the activation), torch.compile, forward and forward+backward, over the models' layers and ResNet-style layers.

FLOPs: 2·N·OH·OW·Cout·(Cin/groups)·KH·KW forward. Minimum bytes: x, W, b read and y written once.
"""

from __future__ import annotations

import torch

from deepfuse.bench import runner
from deepfuse.ops import conv2d_act, conv2d_act_ref

# (name, batch, C_in, H, W, C_out, kernel, stride, padding, groups)
MODEL_LAYERS = [
    ("digits_28", 64, 1, 28, 28, 32, 3, 1, 1, 1),
    ("rgb_128", 32, 3, 128, 128, 32, 3, 2, 1, 1),
    ("rgb_224_stem", 32, 3, 224, 224, 64, 7, 2, 3, 1),
    ("xray_224", 16, 1, 224, 224, 32, 3, 1, 1, 1),
    ("pilotnet_5x5_s2", 64, 3, 66, 200, 24, 5, 2, 0, 1),
    ("pilotnet_3x3", 64, 48, 5, 22, 64, 3, 1, 0, 1),
    ("resnet_56x56x64", 32, 64, 56, 56, 64, 3, 1, 1, 1),
    ("resnet_28x28x128", 32, 128, 28, 28, 128, 3, 1, 1, 1),
    ("resnet_1x1_s2", 32, 128, 28, 28, 256, 1, 2, 0, 1),
    ("depthwise_28", 32, 128, 28, 28, 128, 3, 1, 1, 128),
]
QUICK_LAYERS = [MODEL_LAYERS[0], MODEL_LAYERS[6]]
CPU_LAYERS = [("tiny", 2, 3, 16, 16, 8, 3, 1, 1, 1)]
ACTIVATION = "relu"


def cases(device: torch.device, dtype: torch.dtype, quick: bool) -> list[runner.Case]:
    layers = CPU_LAYERS if device.type != "cuda" else QUICK_LAYERS if quick else MODEL_LAYERS
    result = []
    for name, batch, cin, H, W, cout, k, stride, padding, groups in layers:
        g = torch.Generator(device=device).manual_seed(batch * cin + H)
        x = torch.randn(batch, cin, H, W, device=device, dtype=dtype, generator=g)
        x = x.contiguous(memory_format=torch.channels_last).requires_grad_()
        fan_in = cin // groups * k * k
        w = torch.randn(cout, cin // groups, k, k, device=device, dtype=dtype, generator=g) / fan_in**0.5
        w = w.requires_grad_()
        b = torch.randn(cout, device=device, dtype=dtype, generator=g).requires_grad_()
        with torch.no_grad():
            out = conv2d_act_ref(x, w, b, stride, padding, 1, groups)
        dy = torch.randn(out.shape, device=device, dtype=dtype, generator=g).contiguous(
            memory_format=torch.channels_last
        )
        oh, ow = out.shape[2:]
        flops = 2 * batch * oh * ow * cout * fan_in
        min_bytes = x.element_size() * (x.numel() + w.numel() + cout + out.numel())
        geometry = (stride, padding, 1, groups)  # dilation 1
        result.append(
            runner.Case(
                "conv2d_act",
                f"{name}:{batch}x{cin}x{H}x{W}->{cout}k{k}s{stride}g{groups}",
                (x, w, b, *geometry),
                dy,
                flops,
                min_bytes,
            )
        )
    return result


def _eager(x, w, b, stride, padding, dilation, groups):
    return conv2d_act_ref(x, w, b, stride, padding, dilation, groups, ACTIVATION)


def _eager_nchw(x, *args):
    return _eager(x.contiguous(), *args)


def providers(device: torch.device) -> dict:
    found = {"torch": _eager}
    if device.type == "cuda":
        found["torch_nchw"] = _eager_nchw
        found |= runner.compiled_providers(_eager) | runner.deepfuse_providers(conv2d_act, activation=ACTIVATION)
    return found


def main(quick=False, dtype=torch.bfloat16, modes=("fwd", "fwdbwd"), out_dir="benchmarks/results") -> list[dict]:
    return runner.main("conv2d_act", cases, providers, quick=quick, dtype=dtype, modes=modes, out_dir=out_dir)
