"""forget-it-all: training-free multi-concept erasure for diffusion models."""

__version__ = "0.1.0"
