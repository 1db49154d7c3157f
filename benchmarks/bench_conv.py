"""conv2d_act vs eager cuDNN and torch.compile; see deepfuse.bench.conv2d_act. Same as `deepfuse bench conv2d_act`.

python benchmarks/bench_conv.py [--quick] [--dtype bf16|fp16|fp32] [--modes fwd,fwdbwd] [--out DIR]
"""

import sys

from deepfuse.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "conv2d_act", *sys.argv[1:]]))
