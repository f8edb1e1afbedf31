"""cnnlab: LeNet and its variants as a Hydra + PyTorch Lightning experiment framework.

From Python: ``cnnlab.train(...)``, ``cnnlab.sweep(...)``, ``cnnlab.load(...)``, ``cnnlab.inspect(...)``
(``cnnlab.api``, imported when first used: the command line does not pay for it).
"""

import warnings

__version__ = "0.1.0"
API = ("train", "sweep", "load", "inspect", "Run", "Sweep")

# Lightning warns on every run of a machine with SLURM installed (`make install` installs it for the tests) that
# `srun` is not used; a cnnlab run on SLURM goes through hydra/launcher=slurm, which does use it.
warnings.filterwarnings("ignore", message=r"The `srun` command is available on your system but is not used")
# Lightning 2.6 calls a deprecated torch._pytree check (`isinstance(treespec, LeafSpec)`) inside its own loops and
# warns about it at every fit and test; only a Lightning release can change that.
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")


def __getattr__(name: str):  # PEP 562: the API's names, from cnnlab.api when first asked for
    if name in API:
        from cnnlab import api

        return getattr(api, name)
    raise AttributeError(f"module 'cnnlab' has no attribute {name!r}")
