"""Drop-in torch.nn modules built on deepfuse's fused ops."""

from deepfuse.nn.attention import MultiheadAttention, TransformerEncoderLayer
from deepfuse.nn.consumed import ConsumedActivation, ConsumedBatchNorm2d
from deepfuse.nn.conv import ConvBNAct, FusedConv2d, FusedConvBN2d
from deepfuse.nn.linear import FusedLinear
from deepfuse.nn.lstm import LSTM, LSTMCell
from deepfuse.nn.residual import ResidualBlock

__all__ = [
    "LSTM",
    "ConsumedActivation",
    "ConsumedBatchNorm2d",
    "ConvBNAct",
    "FusedConv2d",
    "FusedConvBN2d",
    "FusedLinear",
    "LSTMCell",
    "MultiheadAttention",
    "ResidualBlock",
    "TransformerEncoderLayer",
]
