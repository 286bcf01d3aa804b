# First, before anything imports MLX: an optimised BLAS for MLX's CPU backend on Linux (engine/blas.py).
from . import blas as _blas

_blas.load_openblas()
