"""Loaders for the example datasets' published on-disk formats. Loaders know no models; nothing downloads.

Every loader takes the path a user gives and raises ``DataError`` — naming the file (and line) and what was
expected — when it cannot read it.
"""

from deepfuse.data.errors import DataError

__all__ = ["DataError"]
