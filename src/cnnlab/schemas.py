"""Config schemas (Hydra structured configs) made from the signatures they configure.

``trainer`` lists every argument of Lightning's ``Trainer`` (so ``trainer.limit_train_batches=20`` needs no ``+``),
``model`` those of ``LeNet`` and ``data`` those of ``MNISTDataModule``: an unknown key or a value of the wrong type
is refused when Hydra composes the config, before anything is built. A field keeps its type where OmegaConf can
check it (int, float, bool, str, lists of them, optional ones); unions and objects are ``Any``. The YAML files
under ``conf/`` extend these (``defaults: [/schema/trainer@_here_]``); the signatures stay the one source.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import inspect
import types
import typing
from typing import Any, Optional

from hydra.core.config_store import ConfigStore

SIMPLE_TYPES = (bool, int, float, str)
SEQUENCES = (list, tuple, collections.abc.Sequence)


def checkable_type(annotation: Any) -> Any:
    """The annotation as OmegaConf can check it, else ``Any``."""
    if annotation in SIMPLE_TYPES:
        return annotation
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        present = [a for a in args if a is not type(None)]
        inner = checkable_type(present[0]) if len(present) == 1 else Any
        return Any if inner is Any else Optional[inner]  # noqa: UP045 (OmegaConf reads typing.Optional)
    if origin in SEQUENCES and len(args) in (1, 2) and args[0] in SIMPLE_TYPES:
        return typing.List[args[0]]  # noqa: UP006 (OmegaConf reads typing.List)
    return Any


def schema_of(target: Any, name: str, skip: tuple[str, ...] = ()) -> type:
    """A dataclass with ``_target_`` and one field per argument of ``target.__init__``, with its default."""
    hints = typing.get_type_hints(target.__init__)
    fields: list[tuple[str, Any, Any]] = [("_target_", str, f"{target.__module__}.{target.__qualname__}")]
    for arg, param in inspect.signature(target.__init__).parameters.items():
        if arg == "self" or arg in skip or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        default = None if param.default is inspect.Parameter.empty else param.default
        kind = checkable_type(hints.get(arg, Any))
        if default is None and kind is not Any and typing.get_origin(kind) is not typing.Union:
            kind = Optional[kind]  # noqa: UP045
        if isinstance(default, tuple | list | dict):
            fields.append((arg, kind, dataclasses.field(default_factory=lambda v=default: type(v)(v))))
        else:
            fields.append((arg, kind, dataclasses.field(default=default)))
    return dataclasses.make_dataclass(name, fields)


def register() -> None:
    """Put the schemas in Hydra's ConfigStore as ``schema/trainer``, ``schema/lenet`` and ``schema/mnist``."""
    import pytorch_lightning as pl

    from cnnlab.data import MNISTDataModule
    from cnnlab.models import LeNet

    store = ConfigStore.instance()
    # callbacks and logger are built from their own config groups and passed to the Trainer by cnnlab.train.build
    store.store(group="schema", name="trainer", node=schema_of(pl.Trainer, "TrainerSchema", ("callbacks", "logger")))
    store.store(group="schema", name="lenet", node=schema_of(LeNet, "LeNetSchema"))
    store.store(group="schema", name="mnist", node=schema_of(MNISTDataModule, "MNISTDataSchema"))


SCHEMA_OF_GROUP = {"trainer": "trainer", "model": "lenet", "data": "mnist"}
TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _wanted(kind: Any) -> tuple[Any, bool]:
    """The plain type a field wants (int, List[int], ...) and whether null is allowed."""
    if typing.get_origin(kind) is typing.Union:
        return next(a for a in typing.get_args(kind) if a is not type(None)), True
    return kind, False


def _fits(value: Any, kind: Any) -> bool:
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is bool:
        return isinstance(value, bool)
    if kind is str:
        return not isinstance(value, list | dict)
    if typing.get_origin(kind) is list:
        (item,) = typing.get_args(kind)
        return isinstance(value, list) and all(_fits(v, item) for v in value)
    return True


def check_overrides(overrides: list[str]) -> None:
    """Refuse, in one line, a ``trainer.*``/``model.*``/``data.*`` override whose key is not an argument of what it
    configures (with the closest names) or whose value has the wrong type. Runs before Hydra composes."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from cnnlab.errors import ConfigError

    store = ConfigStore.instance()
    try:
        parsed = OverridesParser.create().parse_overrides([o for o in overrides if not o.startswith("-")])
    except Exception:  # Hydra reports a malformed override itself
        return
    for override in parsed:
        group, _, field = override.key_or_group.partition(".")
        if group not in SCHEMA_OF_GROUP or not field or "." in field or override.is_add() or override.is_delete():
            continue
        schema = store.load(f"schema/{SCHEMA_OF_GROUP[group]}.yaml").node
        what = "a Lightning Trainer argument" if group == "trainer" else f"a {group} setting"
        if field not in schema:
            close = difflib.get_close_matches(field, [k for k in schema if k != "_target_"], n=3, cutoff=0.6)
            names = ", ".join(f"{group}.{c}" for c in close)
            hint = f"did you mean {names}?" if close else "python -m cnnlab.train --cfg job lists them all."
            raise ConfigError(f"{group}.{field} is not {what}; {hint}")
        node = schema._get_node(field)
        kind, nullable = _wanted(node._metadata.ref_type)
        nullable = nullable or node._is_optional()
        try:
            values = list(override.sweep_iterator()) if override.is_sweep_override() else [override.value()]
        except Exception:  # a range or interval (Optuna) sweep: its values are checked when jobs compose
            continue
        for value in values:
            if (value is None and nullable) or kind is Any or _fits(value, kind):
                continue
            words = TYPE_WORDS.get(kind) or f"a list of {TYPE_WORDS[typing.get_args(kind)[0]].split(' ', 1)[-1]}s"
            raise ConfigError(f"{group}.{field}={value!r} must be {words}{' (or null)' if nullable else ''}.")
