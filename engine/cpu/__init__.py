"""Everything specific to running on a CPU: the BLAS MLX links against (blas.py), compiling and
loading the C sources beside this file (build.py), and the native kernels built from them."""
