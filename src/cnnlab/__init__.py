"""cnnlab: LeNet and its variants as a Hydra + PyTorch Lightning experiment framework."""

import warnings

__version__ = "0.1.0"

# Lightning warns on every run of a machine with SLURM installed (`make install` installs it for the tests) that
# `srun` is not used; a cnnlab run on SLURM goes through hydra/launcher=slurm, which does use it.
warnings.filterwarnings("ignore", message=r"The `srun` command is available on your system but is not used")
# Lightning 2.6 calls a deprecated torch._pytree check (`isinstance(treespec, LeafSpec)`) inside its own loops and
# warns about it at every fit and test; only a Lightning release can change that.
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
