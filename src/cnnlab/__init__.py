"""cnnlab: LeNet and its variants as a Hydra + PyTorch Lightning experiment framework."""

__version__ = "0.1.0"
