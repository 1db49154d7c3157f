"""LSTM vs nn.LSTM (cuDNN), torch.compile and an eager LSTMCell loop; see deepfuse.bench.lstm.
Same as `deepfuse bench lstm`.

    python benchmarks/bench_lstm.py [--quick] [--dtype bf16|fp16|fp32] [--modes fwd,fwdbwd] [--out DIR]
"""

import sys

from deepfuse.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "lstm", *sys.argv[1:]]))
