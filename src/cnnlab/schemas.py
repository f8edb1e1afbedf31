"""Config schemas (Hydra structured configs) made from the signatures they configure, and the override check.

``trainer`` lists every argument of Lightning's ``Trainer`` (so ``trainer.limit_train_batches=20`` needs no ``+``),
``model`` those of ``LeNet``, ``data`` those of ``MNISTDataModule``, ``optimizer`` and ``scheduler`` those of their
torch classes, and the top level the run settings of ``ClassifierModule`` (``init``, ``label_smoothing``, ...):
an unknown key or a value of the wrong type is refused when Hydra composes the config, before anything is built.
A field keeps its type where OmegaConf can check it (int, float, bool, str, lists of them, optional ones); the
others are ``Any`` in OmegaConf's eyes, and ``check_overrides`` checks them against the signature's annotation
(``model.kernel_sizes=[5,abc]``: an integer or a list of integers). The YAML files under ``conf/`` extend these
(``defaults: [/schema/trainer@_here_]``); the signatures stay the one source of each default.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from cnnlab.signatures import SIGNATURES, SIMPLE_TYPES, _is_tensor, kept_tables, parse_annotation

SEQUENCES = (list, tuple, collections.abc.Sequence, collections.abc.Iterable)
INTERVAL = typing.Literal["step", "epoch"] | None  # how often the scheduler steps (null: its own default)
# cnnlab's own scheduler settings, beside the torch scheduler's arguments (ClassifierModule.configure_optimizers)
SCHEDULER_SETTINGS = [
    ("interval", Optional[str], dataclasses.field(default=None, metadata={"annotation": INTERVAL})),  # noqa: UP045
    ("warmup_epochs", float, dataclasses.field(default=0.0, metadata={"annotation": float})),
]
# Top-level settings that no class's signature holds: the seed, the tags, the EMA's decay (callbacks.ema).
RUN_SETTINGS = [
    ("seed", Optional[int], dataclasses.field(default=42, metadata={"annotation": Optional[int]})),  # noqa: UP045
    ("tags", typing.List[str], dataclasses.field(default_factory=list, metadata={"annotation": list[str]})),  # noqa: UP006
    ("ema", Optional[float], dataclasses.field(default=None, metadata={"annotation": Optional[float]})),  # noqa: UP045
]
SCHEMAS: dict[str, type] = {}  # ConfigStore name (schema/<name>) -> dataclass; filled by register()


def _members(annotation: Any) -> list[Any]:
    """The types of a union (``int | None`` -> [int, NoneType]); a plain type as itself."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return list(typing.get_args(annotation))
    return [annotation]


def checkable_type(annotation: Any) -> Any:
    """The annotation as OmegaConf can check it, else ``Any``."""
    if annotation in SIMPLE_TYPES:
        return annotation
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        present = [a for a in args if a is not type(None) and not _is_tensor(a)]
        inner = checkable_type(present[0]) if len(present) == 1 else Any
        if inner is Any or type(None) not in args:
            return inner
        return Optional[inner]  # noqa: UP045 (OmegaConf reads typing.Optional)
    if origin in SEQUENCES and len(args) in (1, 2) and args[0] in SIMPLE_TYPES and origin is not tuple:
        return typing.List[args[0]]  # noqa: UP006 (OmegaConf reads typing.List)
    return Any


def schema_from_table(name: str, path: str, rows: list[tuple[str, str, Any]], with_target: bool, extra: list) -> type:
    """A dataclass with ``_target_`` (unless ``with_target=False``) and one field per argument, with its default;
    each field's ``metadata["annotation"]`` keeps the signature's own annotation."""
    fields: list[tuple[str, Any, Any]] = [("_target_", str, path)] if with_target else []
    for arg, text, default in rows:
        annotation = parse_annotation(text)
        kind = checkable_type(annotation)
        if default is None and kind is not Any and typing.get_origin(kind) is not typing.Union:
            kind = Optional[kind]  # noqa: UP045
        meta = {"annotation": annotation}
        if isinstance(default, tuple | list | dict):
            fields.append((arg, kind, dataclasses.field(default_factory=lambda v=default: type(v)(v), metadata=meta)))
        else:
            fields.append((arg, kind, dataclasses.field(default=default, metadata=meta)))
    return dataclasses.make_dataclass(name, fields + list(extra or []))


def register() -> None:
    """Put the schemas in Hydra's ConfigStore as ``schema/<name>``, from the kept tables (no torch, no Lightning)."""
    extra_fields = {"scheduler": SCHEDULER_SETTINGS, "run": RUN_SETTINGS}
    for name, (path, rows) in kept_tables().items():
        extra = SIGNATURES[name][2]
        SCHEMAS[name] = schema_from_table(f"{name.title()}Schema", path, rows, extra != "run", extra_fields.get(extra))
    SCHEMAS["no_scheduler"] = dataclasses.make_dataclass("NoSchedulerSchema", SCHEDULER_SETTINGS)
    store = ConfigStore.instance()
    for name, schema in SCHEMAS.items():
        if name != "run":
            store.store(group="schema", name=name, node=schema)
    # The top level stays open (a sweep file may add keys, e.g. chapter6_lr): a typed root would close it to the
    # groups merged after it. So the run settings go in as their defaults, plain; their types are checked from the
    # same annotations (check_overrides on the command line, check_run_settings on the composed config).
    store.store(group="schema", name="run", node=defaults_of(SCHEMAS["run"]))


def defaults_of(schema: type) -> dict[str, Any]:
    """A schema's defaults as a plain dict."""
    fields = dataclasses.fields(schema)
    return {f.name: f.default_factory() if callable(f.default_factory) else f.default for f in fields}


def check_run_settings(cfg: Any) -> None:
    """The top-level run settings of a composed config have the types of their annotations (``ConfigError``)."""
    for key, annotation in _annotations("run").items():
        value = cfg.get(key)
        value = list(value) if hasattr(value, "__iter__") and not isinstance(value, str | dict) else value
        if not fits(value, annotation):
            raise type_error(key, value, annotation)


def type_error(key: str, value: Any, annotation: Any) -> Exception:
    """``tags='ablation' must be a list of strings (e.g. tags=[ablation]).``"""
    from cnnlab.errors import ConfigError

    listed = words(annotation).startswith("a list") and not isinstance(value, list)  # a scalar given for a list
    example = f" (e.g. {key}=[{value}])" if listed else ""
    return ConfigError(f"{key}={value!r} must be {words(annotation)}{example}.")


# The schemas a group's keys may belong to (its choices extend these): a key none of them has is refused.
SCHEMAS_OF_GROUP = {
    "trainer": ("trainer",),
    "model": ("lenet",),
    "data": ("mnist",),
    "optimizer": ("sgd", "adam", "adamw"),
    "scheduler": ("cosine", "onecycle", "no_scheduler"),
    "": ("run",),
}
WHAT = {"trainer": "a Lightning Trainer argument", "": "a top-level setting"}
TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}


def fits(value: Any, annotation: Any) -> bool:
    """Whether a config value fits a signature's annotation (numbers for ``float | Tensor``, lists for sequences)."""
    if annotation is Any or _is_tensor(annotation):
        return annotation is Any or (isinstance(value, int | float) and not isinstance(value, bool))
    members = _members(annotation)
    if len(members) > 1:
        return any(fits(value, member) for member in members)
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str | int | float) and not isinstance(value, bool)
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return value in args
    if origin in SEQUENCES:
        if not isinstance(value, list):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(fits(v, a) for v, a in zip(value, args, strict=True))
        return not args or all(fits(v, args[0]) for v in value)
    return True


def words(annotation: Any) -> str:
    """An annotation in words: ``an integer or a list of integers``."""
    members = [m for m in _members(annotation) if not _is_tensor(m)]
    if type(None) in members and len(members) > 1:
        others = [m for m in members if m is not type(None)]
        return f"{words(typing.Union[tuple(others)])} (or null)"  # noqa: UP007 (a union built at run time)
    if len(members) > 1:
        return " or ".join(words(m) for m in members)
    (annotation,) = members
    if annotation in TYPE_WORDS:
        return TYPE_WORDS[annotation]
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return "one of " + ", ".join(map(str, args))
    if origin in SEQUENCES and args:
        item = words(args[0])
        return f"a list of {item.split(' ', 1)[-1]}s" if item.startswith(("a ", "an ")) else f"a list of {item}"
    return "a value of another type"


def _annotations(schema: str) -> dict[str, Any]:
    """Each field's annotation from its signature; a field whose default is None takes null too."""
    fields = dataclasses.fields(SCHEMAS[schema])
    annotations = {f.name: f.metadata.get("annotation", f.type) for f in fields}
    return {f.name: annotations[f.name] | None if f.default is None else annotations[f.name] for f in fields}


# Groups whose files may choose another optimizer or scheduler than the defaults list (an experiment, say).
COMPOSITES = ("experiment", "ablation", "sweep", "debug")


def schema_of_choice(conf_dir: Path, group: str, choice: str) -> str | None:
    """The schema a choice's file extends (``conf/optimizer/adam.yaml``: ``/schema/adam@_here_`` -> ``adam``)."""
    path = conf_dir / group / f"{choice}.yaml"
    defaults = OmegaConf.load(path).get("defaults", []) if path.is_file() else []
    named = [str(d) for d in defaults if str(d).startswith("/schema/")]
    return named[0].removeprefix("/schema/").split("@")[0] if named else None


def users_choice(group: str, parsed: list[Any], conf_dir: Path | None) -> bool:
    """Whether ``group`` is chosen on the command line with a config cnnlab does not ship (a ``--config-dir``'s,
    ``model=mynet``): its keys are that config's, for Hydra to check when it composes."""
    chosen = [o for o in parsed if o.key_or_group == group]
    if not chosen or conf_dir is None:
        return False
    try:
        values = list(chosen[-1].sweep_iterator()) if chosen[-1].is_sweep_override() else [chosen[-1].value()]
    except Exception:  # an Optuna choice over group options: its values are checked when jobs compose
        return False
    return any(not (conf_dir / group / f"{value}.yaml").is_file() for value in values)


def chosen_schemas(group: str, parsed: list[Any], conf_dir: Path | None) -> tuple[tuple[str, ...], str | None]:
    """The schemas an ``optimizer.*``/``scheduler.*`` key is checked against, and the choice when it is known: the
    one chosen on the command line, else the defaults list's unless a composite group may change it."""
    every = SCHEMAS_OF_GROUP[group]
    if group not in ("optimizer", "scheduler") or conf_dir is None:
        return every, None
    chosen = [o for o in parsed if o.key_or_group == group]
    if chosen and not chosen[-1].is_sweep_override():
        choice = str(chosen[-1].value())
    elif not chosen and not any(o.key_or_group in COMPOSITES for o in parsed):
        defaults = OmegaConf.load(conf_dir / "config.yaml").defaults
        choice = next(str(d[group]) for d in defaults if isinstance(d, DictConfig) and group in d)
    else:
        return every, None
    schema = schema_of_choice(conf_dir, group, choice)
    return ((schema,), choice) if schema in SCHEMAS else (every, None)


def check_trial_callback(override: Any) -> None:
    """``hydra.sweeper.trial_callbacks.<name>=true|false`` names a callback a search's trial goes without (cnnlab's
    Optuna sweeper; Hydra's own message would be a struct or type error of several lines)."""
    from cnnlab.errors import ConfigError
    from cnnlab.study import LIGHT_TRIAL

    key, prefix = override.key_or_group, "hydra.sweeper.trial_callbacks."
    if not key.startswith(prefix):
        check_sweeper_setting(override)
        return
    name = key.removeprefix(prefix)
    if name not in LIGHT_TRIAL:
        close = difflib.get_close_matches(name, list(LIGHT_TRIAL), n=1, cutoff=0.6)
        hint = f"did you mean {prefix}{close[0]}? " if close else ""
        raise ConfigError(f"{key} is not a callback a search's trial goes without ({', '.join(LIGHT_TRIAL)}); "
                          f"{hint}Each is true (as in a single run) or false.")  # fmt: skip
    if not isinstance(override.value(), bool):
        raise ConfigError(f"{key}={override.get_value_element_as_str()}: true (as in a single run) or false.")


def check_sweeper_setting(override: Any) -> None:
    """``hydra.sweeper.<setting>=<value>`` of cnnlab's Optuna sweeper (``OptunaSweeperConf``) has its type:
    ``hydra.sweeper.cheapest_of=abc`` is one line, not Hydra's validation error of several. Keys the schema does not
    have are left to Hydra (another sweeper may take them)."""
    key = override.key_or_group
    if not key.startswith("hydra.sweeper.") or override.is_sweep_override():
        return
    from hydra_plugins.cnnlab_plugins.plugins import OptunaSweeperConf

    annotation = typing.get_type_hints(OptunaSweeperConf).get(key.removeprefix("hydra.sweeper."))
    if annotation is None or annotation is Any or typing.get_origin(annotation) is dict:
        return
    try:
        value = override.value()
    except Exception:  # Hydra's grammar: its own message
        return
    if not fits(value, annotation):
        raise type_error(key, value, annotation)


def check_overrides(overrides: list[str], conf_dir: Path | None = None, nullable: tuple[str, ...] = ()) -> None:
    """Refuse, in one line, an override of a schema'd setting whose key is not an argument of what it configures
    (with the closest names) or whose value has the wrong type. Runs before Hydra composes; with ``conf_dir``, an
    ``optimizer.*``/``scheduler.*`` key is checked against the chosen optimizer's or scheduler's own arguments.
    ``nullable``: keys that take null besides their type in this entry point (``tta`` of ``cnnlab.eval``: as
    trained). A ``--config-dir`` among them must be a folder."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from cnnlab.config import check_config_dirs
    from cnnlab.errors import ConfigError

    check_config_dirs(overrides)

    parser, parsed = OverridesParser.create(), []
    for given in (o for o in overrides if "=" in o and not o.startswith("-")):  # not a flag, nor its value
        try:
            parsed.append(parser.parse_override(given))
        except Exception as err:  # Hydra's message: "Error parsing override ...", then why, then a link
            lines = [line for line in str(err).splitlines() if line.strip()]
            why = lines[1] if len(lines) > 1 else (lines[0] if lines else type(err).__name__)
            raise ConfigError(f"{given} cannot be parsed: {why} (Hydra's override grammar: "
                              f"https://hydra.cc/docs/advanced/override_grammar/basic).") from None  # fmt: skip
    for override in parsed:
        key = override.key_or_group
        check_trial_callback(override)
        group, _, field = key.partition(".") if "." in key else ("", "", key)
        if group not in SCHEMAS_OF_GROUP or "." in field or "/" in key or override.is_add() or override.is_delete():
            continue
        if users_choice(group, parsed, conf_dir):
            continue
        names, choice = chosen_schemas(group, parsed, conf_dir)
        known = [_annotations(name) for name in names]
        if choice is not None and field not in known[0]:
            others = sorted(f.stem for f in (conf_dir / group).glob("*.yaml")
                            if field in _annotations(schema_of_choice(conf_dir, group, f.stem) or "run"))  # fmt: skip
            if others:
                target = next((f.default for f in dataclasses.fields(SCHEMAS[names[0]]) if f.name == "_target_"), None)
                what = f"an argument of {target} ({group}={choice})" if target else f"a setting of {group}={choice}"
                raise ConfigError(f"{key} is not {what}; {' or '.join(f'{group}={o}' for o in others)} takes it.")
        if not any(field in fields for fields in known):
            if not group:
                continue  # a top-level key of a config file (an experiment, a sweep): Hydra checks it
            names = sorted({k for fields in known for k in fields if k != "_target_"})
            close = difflib.get_close_matches(field, names, n=3, cutoff=0.6)
            hint = f"did you mean {', '.join(f'{group}.{c}' for c in close)}?" if close else (
                "python -m cnnlab.train --cfg job lists them all.")  # fmt: skip
            what = WHAT.get(group) or f"{'an' if group[0] in 'aeiou' else 'a'} {group} setting"
            raise ConfigError(f"{key} is not {what}; {hint}")
        annotation = next(fields[field] for fields in known if field in fields)
        try:
            values = list(override.sweep_iterator()) if override.is_sweep_override() else [override.value()]
        except Exception:  # a range or interval (Optuna) sweep: its values are checked when jobs compose
            continue
        for value in values:
            if not fits(value, annotation) and not (value is None and key in nullable):
                raise type_error(key, value, annotation)
