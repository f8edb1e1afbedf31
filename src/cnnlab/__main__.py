"""``python -m cnnlab`` is ``python -m cnnlab.train``: the same override check, the same run."""

from cnnlab.train import cli

cli()
