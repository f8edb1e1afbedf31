"""``python -m cnnlab`` is ``python -m cnnlab.train``."""

from cnnlab.train import main

main()
