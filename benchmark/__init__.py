"""Fuse4Seg benchmark suite: data, training engines, evaluation, rendering and the command line."""

__version__ = "0.1.0"
