"""What a search checks before its first trial, each mistake one ``ConfigError`` naming the setting: how many trials
(in all, at once), the pruner's and the sampler's arguments (names, types by Optuna's own signatures, the required
ones, then the object built), the storage (its URL parses, its folder can be made, an existing file is an Optuna
study), and the search space (each key is a setting of the config's schema, each value of a ``choice`` and each end
of an ``interval`` has the key's type, each choice of a config group exists).

What can fail only inside a trial (a sampled value that does not compose) fails that trial, with its reason in the
record. Light: the standard library and Hydra's parser; Optuna and SQLAlchemy where their objects are checked.
"""

from __future__ import annotations

import collections.abc
import inspect
import sqlite3
import sys
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from cnnlab.errors import ConfigError

OPTUNA_TABLES = {"studies", "trials", "version_info"}  # what every Optuna RDB storage holds


def check_counts(sweeper: Mapping[str, Any]) -> None:
    """``n_trials`` and ``n_jobs`` are whole numbers of at least 1."""
    for key, what in (("n_trials", "trials in all"), ("n_jobs", "trials in flight at once")):
        value = sweeper.get(key, 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"hydra.sweeper.{key}={value!r} must be an integer >= 1 (the {what}).")


def parameter_types(cls: type) -> dict[str, Any]:
    """The annotations of ``cls``'s arguments, as types (Optuna writes them as strings); those that cannot be read
    are left out (their values are checked by building the object)."""
    names = {**vars(typing), **vars(collections.abc), **vars(sys.modules[cls.__module__])}
    types = {}
    for parameter in inspect.signature(cls).parameters.values():
        annotation = parameter.annotation
        if isinstance(annotation, str):
            try:
                annotation = eval(annotation, names)  # noqa: S307 (the library's own annotation text)
            except Exception:
                continue
        if annotation is not inspect.Parameter.empty:
            types[parameter.name] = annotation
    return types


def check_arguments(setting: str, cls: type, args: Mapping[str, Any], where: str) -> None:
    """Every key of ``args`` is an argument of ``cls``, of its type; every argument without a default is given."""
    from cnnlab.schemas import fits, words

    parameters = {name: p for name, p in inspect.signature(cls).parameters.items() if name not in ("args", "kwargs")}
    unknown = sorted(set(args) - set(parameters))
    if unknown:
        raise ConfigError(
            f"{where}: {', '.join(unknown)} is not an argument of {setting} ({cls.__name__}: {', '.join(parameters)})."
        )
    types = parameter_types(cls)
    for name, value in args.items():
        if name in types and not fits(value, types[name]):
            raise ConfigError(f"{where}.{name}={value!r} must be {words(types[name])} ({cls.__name__}'s {name}).")
    missing = [name for name, p in parameters.items() if p.default is inspect.Parameter.empty and name not in args]
    if missing:
        wanted = ", ".join(f"{name} ({words(types[name]) if name in types else 'a value'})" for name in missing)
        raise ConfigError(f"{setting} needs {wanted}: give '{where}={{{missing[0]}: ...}}'.")


def built(setting: str, make: Callable[[], Any]) -> Any:
    """The object ``make`` builds; the library's refusal of a value (``TypeError``, ``ValueError``) as one line."""
    try:
        return make()
    except (TypeError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{setting}: {first}") from None


def check_storage(url: str | None) -> None:
    """The storage URL parses; a SQLite file's folder can be made, and a file that is there is an Optuna study."""
    if not url:
        return
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(str(url))
    except (ArgumentError, ValueError) as err:
        raise ConfigError(f"hydra.sweeper.storage={url} is not a database URL ({err}); give e.g. "
                          f"sqlite:///${{hydra.sweep.dir}}/optuna.db.") from None  # fmt: skip
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return
    path = Path(parsed.database)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
        why = f"{blocker} is a file" if blocker is not None else err.strerror
        raise ConfigError(f"hydra.sweeper.storage={url}: cannot create {path.parent} ({why}); point it at a "
                          f"writable folder.") from None  # fmt: skip
    if path.exists():
        check_study_file(path)


def check_study_file(path: Path) -> None:
    """``path`` is an Optuna study that SQLite can read: not truncated, overwritten or another program's database.

    Read-only, with the standard library's sqlite3: a file that is no study is never written to (Optuna would add
    its tables to another program's database)."""
    fix = ("move it away (the runs' records stay where they are: python -m cnnlab.report still reports them), then "
           "resume, or start a new sweep")  # fmt: skip
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise sqlite3.DatabaseError("database disk image is malformed")
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.Error as err:
        raise ConfigError(f"{path} is not a readable Optuna study ({err}): it is truncated or overwritten; "
                          f"{fix}.") from None
    if not OPTUNA_TABLES <= tables:
        raise ConfigError(f"{path} is a database of another program (no Optuna study in it: tables "
                          f"{', '.join(sorted(tables)) or 'none'}); {fix}.")  # fmt: skip


def check_space(space: Mapping[str, Any], fixed: Mapping[str, str], group_options: Callable[[str], list[str]],
                conf_dir: Path, compose: Callable[[list[str]], Any]) -> None:  # fmt: skip
    """Each key of the search space is a config group or a setting the config's schema has (``cnnlab.schemas``), and
    each of its values (a choice's, an interval's ends) fits: one of the group's choices, or the key's type. Then
    the space's first point composes with the fixed overrides (a key no schema knows: Hydra's own check)."""
    from cnnlab.schemas import check_overrides

    groups = {key: [str(v) for v in values_of(d)] for key, d in space.items() if group_options(key.lstrip("+~"))}
    context = [f"{k}={v}" for k, v in fixed.items()] + [f"{k}={','.join(v)}" for k, v in groups.items()]
    for key, distribution in space.items():
        if key in groups:
            options = group_options(key.lstrip("+~"))
            unknown = [v for v in groups[key] if v not in options]
            if unknown:
                raise ConfigError(f"the search space: {key}={unknown[0]} is not a choice of the {key.lstrip('+~')} "
                                  f"group ({', '.join(options)}).")  # fmt: skip
            continue
        for value in values_of(distribution):
            try:  # with the fixed overrides and the groups' choices: a key of the chosen optimizer, say
                check_overrides(["-m", *context, f"{key}={override_text(value)}"], conf_dir)
            except ConfigError as err:
                hint = ""
                if hasattr(distribution, "low") and "must be an integer" in str(err):
                    hint = (f" The search space gives {key} an interval of decimals: give its ends as integers, "
                            f"interval({int(distribution.low)}, {int(distribution.high)}).")  # fmt: skip
                raise ConfigError(f"the search space: {err}{hint}") from None
    first = [f"{key}={override_text(next(iter(values_of(d))))}" for key, d in space.items()]
    try:
        compose([*context[: len(fixed)], *first])
    except Exception as err:  # Hydra's composition error: its first line names the key
        lines = [line for line in str(err).splitlines() if line.strip()]
        raise ConfigError(f"the search space does not compose: {lines[0] if lines else type(err).__name__}") from None


def values_of(distribution: Any) -> Iterable[Any]:
    """A distribution's values to check: a choice's every value, a range's or an interval's two ends."""
    if hasattr(distribution, "choices"):
        return distribution.choices
    return (distribution.low, distribution.high)


def override_text(value: Any) -> str:
    """A value as an override writes it (a list as ``[6,16]``)."""
    if isinstance(value, list | tuple):
        return "[" + ",".join(override_text(v) for v in value) + "]"
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
