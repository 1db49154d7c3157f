"""Drop-in torch.nn modules built on deepfuse's fused ops."""

from deepfuse.nn.attention import MultiheadAttention, TransformerEncoderLayer
from deepfuse.nn.conv import ConvBNAct, FusedConv2d
from deepfuse.nn.linear import FusedLinear
from deepfuse.nn.lstm import LSTM, LSTMCell
from deepfuse.nn.residual import ResidualBlock

__all__ = [
    "LSTM",
    "ConvBNAct",
    "FusedConv2d",
    "FusedLinear",
    "LSTMCell",
    "MultiheadAttention",
    "ResidualBlock",
    "TransformerEncoderLayer",
]
