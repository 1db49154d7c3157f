"""attention vs SDPA (each backend), torch.compile and the padded-batch comparison; see deepfuse.bench.attention.
Same as `deepfuse bench attention`.

    python benchmarks/bench_attention.py [--quick] [--dtype bf16|fp16|fp32] [--modes fwd,fwdbwd] [--out DIR]
"""

import sys

from deepfuse.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "attention", *sys.argv[1:]]))
