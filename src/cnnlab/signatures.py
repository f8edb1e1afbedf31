"""The signatures the config schemas follow (``cnnlab.schemas``), kept in the repo as plain tables.

Composing a config must not import torch or Lightning (``--help`` and a typo answer at once), so the schemas are
built from ``schemas_kept.py``, which ``python -m cnnlab.signatures --write`` writes from the installed packages'
signatures; ``python -m cnnlab.signatures --check`` and tests/test_schemas.py say whether it still matches them.
"""

from __future__ import annotations

import collections.abc
import inspect
import logging
import types
import typing
from typing import Any

SIMPLE_TYPES = (bool, int, float, str)


def _is_tensor(annotation: Any) -> bool:
    return getattr(annotation, "__name__", "") == "Tensor"  # torch's ``float | Tensor``: a number from a config


# The classes whose signatures the schemas follow: ConfigStore name -> (class path, arguments left out, extra fields).
SIGNATURES = {
    # callbacks and logger are built from their own config groups and passed to the Trainer by cnnlab.run.build
    "trainer": ("pytorch_lightning.Trainer", ("callbacks", "logger"), None),
    "lenet": ("cnnlab.models.LeNet", (), None),
    "mnist": ("cnnlab.data.MNISTDataModule", (), None),
    "sgd": ("torch.optim.SGD", ("params",), None),
    "adam": ("torch.optim.Adam", ("params",), None),
    "adamw": ("torch.optim.AdamW", ("params",), None),
    "cosine": ("torch.optim.lr_scheduler.CosineAnnealingLR", ("optimizer",), "scheduler"),
    "onecycle": ("torch.optim.lr_scheduler.OneCycleLR", ("optimizer",), "scheduler"),
    "run": ("cnnlab.module.ClassifierModule", ("model", "optimizer", "scheduler"), "run"),
}
KEPT = "schemas_kept.py"  # beside this file: the signatures as plain tables, so composing imports neither torch
# nor Lightning; `python -m cnnlab.schemas --write` writes it, tests/test_schemas.py checks it against the installed


class Tensor:
    """Stands for ``torch.Tensor`` in a kept annotation (``float | Tensor``: a number from a config)."""


ANNOTATION_NAMES = {
    **{t.__name__: t for t in SIMPLE_TYPES}, "None": type(None), "Any": Any, "Tensor": Tensor,
    "list": list, "tuple": tuple, "Sequence": collections.abc.Sequence, "Iterable": collections.abc.Iterable,
    "Literal": typing.Literal,
}  # fmt: skip


def describe(annotation: Any) -> str:
    """An annotation as a short expression of ``ANNOTATION_NAMES`` (anything else is ``Any``)."""
    if annotation is type(None) or annotation is None:
        return "None"
    if annotation in SIMPLE_TYPES:
        return annotation.__name__
    if _is_tensor(annotation):
        return "Tensor"
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        # in one order whatever the process: typing caches equal unions (int | float is float | int), so the
        # order of their args is that of whichever was made first, which depends on what was imported before
        rank = {"int": 0, "float": 1, "bool": 2, "str": 3, "None": 9}  # scalars first, then the rest by name
        members = sorted(set(describe(a) for a in args), key=lambda m: (rank.get(m, 4), m))
        return "Any" if "Any" in members else " | ".join(members)
    if origin is typing.Literal:
        return f"Literal[{', '.join(repr(a) for a in args)}]"
    names = {list: "list", tuple: "tuple", collections.abc.Sequence: "Sequence", collections.abc.Iterable: "Iterable"}
    if origin in names:
        inner = ", ".join("..." if a is Ellipsis else describe(a) for a in args)
        return f"{names[origin]}[{inner}]" if args else names[origin]
    return "Any"


def parse_annotation(text: str) -> Any:
    """A kept annotation back as a type (``int | Sequence[int]``)."""
    return eval(text, {"__builtins__": {}}, ANNOTATION_NAMES)  # noqa: S307 (the kept file's own short expressions)


def signature_table(path: str, skip: tuple[str, ...]) -> list[tuple[str, str, Any]]:
    """``(argument, annotation, default)`` for each argument of a class's ``__init__`` (imports the class)."""
    import ast
    import importlib

    module, _, name = path.rpartition(".")
    target = getattr(importlib.import_module(module), name)
    hints = typing.get_type_hints(target.__init__)
    rows = []
    for arg, param in inspect.signature(target.__init__).parameters.items():
        if arg == "self" or arg in skip or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        default = None if param.default is inspect.Parameter.empty else param.default
        try:
            kept = ast.literal_eval(repr(default)) == default
        except (ValueError, SyntaxError):
            kept = False
        rows.append((arg, describe(hints.get(arg, Any)), default if kept else None))
    return rows


def installed_tables() -> dict[str, tuple[str, list[tuple[str, str, Any]]]]:
    """The schemas' tables from the installed classes' signatures (imports torch and Lightning)."""
    return {name: (path, signature_table(path, skip)) for name, (path, skip, _) in SIGNATURES.items()}


def kept_source(tables: dict[str, tuple[str, list[tuple[str, str, Any]]]]) -> str:
    """The text of ``schemas_kept.py`` for these tables."""
    from importlib.metadata import version

    lines = [
        '"""The signatures cnnlab\'s config schemas follow, kept as plain data: composing a config imports neither',
        "torch nor Lightning. Written by `python -m cnnlab.signatures --write`; tests/test_schemas.py checks it",
        f'against the installed packages (here: pytorch-lightning {version("pytorch-lightning")}, torch '
        f'{version("torch")})."""',
        "# ruff: noqa: E501",
        "",
        "TABLES = {",
    ]
    for name, (path, rows) in tables.items():
        lines.append(f"    {name!r}: ({path!r}, [")
        lines += [f"        {row!r}," for row in rows]
        lines.append("    ]),")
    return "\n".join([*lines, "}", ""])


def kept_tables() -> dict[str, tuple[str, list[tuple[str, str, Any]]]]:
    from cnnlab.schemas_kept import TABLES

    return TABLES

def schema_differences() -> list[str]:
    """How the kept tables differ from the installed signatures: ``Trainer: new argument x; gone y`` per class."""
    kept, installed = kept_tables(), installed_tables()
    differences = []
    for name, (path, rows) in installed.items():
        now, was = {r[0]: r for r in rows}, {r[0]: r for r in kept.get(name, (path, []))[1]}
        parts = [f"new {', '.join(sorted(set(now) - set(was)))}"] if set(now) - set(was) else []
        parts += [f"gone {', '.join(sorted(set(was) - set(now)))}"] if set(was) - set(now) else []
        changed = sorted(k for k in set(now) & set(was) if now[k] != was[k])
        parts += [f"changed {', '.join(changed)}"] if changed else []
        if parts:
            differences.append(f"{path}: {'; '.join(parts)}")
    return differences


def kept_schemas_warning() -> None:
    """A warning (once per process) when the installed packages' signatures are not the kept ones: a Lightning or
    torch upgrade. Cheap in a run: the classes are imported already."""
    global _checked
    if _checked:
        return
    _checked = True
    differences = schema_differences()
    if differences:
        logging.getLogger("cnnlab.signatures").warning(
            "the config schemas (%s) do not match the installed packages (%s): settings they added cannot be set, "
            "and those they removed fail when the run builds; run python -m cnnlab.signatures --write",
            KEPT, "; ".join(differences),
        )  # fmt: skip


_checked = False


def main(argv: list[str] | None = None) -> int:
    """``python -m cnnlab.signatures --write``: record the installed signatures in ``schemas_kept.py``; ``--check``: say
    whether the kept ones still match (exit status 1 when they do not)."""
    import argparse
    from pathlib import Path

    parser = argparse.ArgumentParser(prog="python -m cnnlab.signatures", description=main.__doc__)
    parser.add_argument("--write", action="store_true", help="write schemas_kept.py from the installed packages")
    parser.add_argument("--check", action="store_true", help="say whether schemas_kept.py matches them (default)")
    write = parser.parse_args(argv).write
    kept, text = Path(__file__).with_name(KEPT), kept_source(installed_tables())
    if write:
        kept.write_text(text)
        print(f"wrote {kept}")
        return 0
    if kept_tables() != installed_tables():
        print(f"{kept} does not match the installed packages' signatures: run python -m cnnlab.signatures --write")
        return 1
    print(f"{kept} matches the installed packages")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
