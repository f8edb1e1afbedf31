"""The ``cnnlab`` command: ``cnnlab train|eval|predict|inspect|report|resume [args]``, each the ``python -m
cnnlab.<command>`` of the same name (which keep working), and ``cnnlab --version``.

Nothing heavy is imported before the command is known: ``cnnlab --help`` answers at once.
"""

from __future__ import annotations

import difflib
import importlib
import os
import sys

from cnnlab import __version__

# command -> (module, its entry function, what it does)
COMMANDS = {
    "train": ("cnnlab.train", "cli", "train a model; -m sweeps (cnnlab train model=lenet_maxpool, -m sweep=chapter6)"),
    "eval": ("cnnlab.eval", "cli", "test a checkpoint again (cnnlab eval ckpt=<run dir>)"),
    "predict": ("cnnlab.predict", "cli", "classify image files with a checkpoint (cnnlab predict ckpt=... images=...)"),
    "inspect": ("cnnlab.inspect", "cli", "a model's layers, parameters, multiply-adds (cnnlab inspect model=...)"),
    "report": ("cnnlab.report", "main", "a sweep's or a log root's report (cnnlab report logs)"),
    "resume": ("cnnlab.resume", "main", "finish a stopped sweep or search (cnnlab resume <sweep dir>)"),
}

USAGE = "\n".join(
    [
        f"cnnlab {__version__}: LeNet and its variants as a Hydra + PyTorch Lightning experiment framework",
        "",
        "usage: cnnlab <command> [overrides or arguments]     cnnlab <command> --help     cnnlab --version",
        "",
        "commands:",
        *(f"  {name:<8} {what}" for name, (_, _, what) in COMMANDS.items()),
        "",
        "Your own configs: cnnlab train --config-dir myconf model=mynet (myconf/model/mynet.yaml, whose _target_",
        "may be any torch.nn.Module importable from the folder you run cnnlab in). `cnnlab model=...` is cnnlab train.",
    ]
)


def main(argv: list[str] | None = None) -> int:
    """Run the command ``argv`` (default: the command line) names; its exit status."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    if args[0] in ("-V", "--version"):
        print(f"cnnlab {__version__}")
        return 0
    if args[0] in COMMANDS:
        command, rest = args[0], args[1:]
    elif "=" in args[0] or args[0].startswith("-"):
        command, rest = "train", args  # overrides alone are a run, as `python -m cnnlab` (DDP ranks rerun it so)
    else:
        close = difflib.get_close_matches(args[0], COMMANDS, n=1)
        hint = f"did you mean cnnlab {close[0]}?" if close else f"one of: {', '.join(COMMANDS)} (cnnlab --help)."
        print(f"cnnlab: error: {args[0]} is not a cnnlab command; {hint}", file=sys.stderr)
        return 2
    # As `python -m` does: a network of your own (model._target_: mynet.MyNet) imports from the working directory.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module, function, _ = COMMANDS[command]
    sys.argv = [sys.argv[0], *rest]  # Hydra reads the command line itself
    status = getattr(importlib.import_module(module), function)()
    return status if isinstance(status, int) else 0


if __name__ == "__main__":
    sys.exit(main())
