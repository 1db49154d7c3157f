"""linear_act vs eager torch and torch.compile; see deepfuse.bench.linear_act. Same as `deepfuse bench linear_act`.

python benchmarks/bench_linear_act.py [--quick] [--dtype bf16|fp16|fp32] [--modes fwd,fwdbwd] [--out DIR]
"""

import sys

from deepfuse.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "linear_act", *sys.argv[1:]]))
