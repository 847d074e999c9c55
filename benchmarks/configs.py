"""Run configs as data: composed from layers, then validated and completed by jsonargparse — once.

A planned run's config is composed from layers (the recipe, its per-student overrides, the method's config file,
the table row's ``init_args``/``overrides``, the preset).  The composed dict is then checked by jsonargparse, the
library the CLI parses every run with, against the signatures of the method, the datamodule and the Trainer:
unknown keys, ``Literal`` choices, nested dataclass keys and types are its verdicts, not kdbench's.  A run whose
config does not parse is shown as blocked with one line built from jsonargparse's own message (the bad key or
value, and what is accepted).  A config that parses is completed with the defaults jsonargparse reads from the
same signatures, so every run config states every hyper-parameter of its method and datamodule: a row that spells
out a default and a row that relies on it are the same run, and a changed default gives new runs.

Parsers are built once per class and verdicts cached per distinct argument set (thousands of runs share a few
hundred), so planning every table stays a matter of seconds.
"""

from __future__ import annotations

import copy
import difflib
import importlib
import json
import re
import typing
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import ArgumentParser

from benchmarks.errors import KDBenchError
from benchmarks.tables import REPO_ROOT

__all__ = [
    "deep_merge",
    "merge_into",
    "set_dotted",
    "get_dotted",
    "load_yaml",
    "resolve_class",
    "method_or_none",
    "check_arguments",
    "complete_arguments",
]

#: Method arguments the CLI fills itself: the datamodule links ``num_classes`` (not a config key of a run).
MODEL_LINKED = frozenset({"num_classes"})
#: Method arguments never completed with a default: the networks, which every run states itself.
MODEL_NOT_COMPLETED = frozenset({"student", "teacher"})


# ---------------------------------------------------------------------------------------------- dict layers
def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; ``update`` wins; neither input is modified."""
    merged = copy.deepcopy(base)
    merge_into(merged, update)
    return merged


def merge_into(config: dict[str, Any], update: dict[str, Any]) -> None:
    """``deep_merge`` in place: ``config`` is changed, ``update`` is copied where it is used."""
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            merge_into(config[key], value)
        else:
            config[key] = copy.deepcopy(value)


def set_dotted(config: dict[str, Any], dotted: str, value: Any) -> None:
    node = config
    *parents, last = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = copy.deepcopy(value)


def merge_dotted(config: dict[str, Any], dotted: str, value: Any) -> None:
    """``set_dotted``, except that a group of settings (a dict without ``class_path``) written over a group merges
    into it: a row's ``layers: {alpha_inter: 0.2}`` changes that one setting of the method config's ``layers``."""
    current = get_dotted(config, dotted)
    if isinstance(value, dict) and isinstance(current, dict) and "class_path" not in value:
        merge_into(current, value)
    else:
        set_dotted(config, dotted, value)


def get_dotted(config: dict[str, Any], dotted: str, default: Any = None) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML config file (a relative path is relative to the repository), parsed once per version of the file."""
    path = REPO_ROOT / path  # an absolute path stays itself
    if not path.is_file():
        raise KDBenchError(f"config file not found: {path}")
    stat = path.stat()
    return copy.deepcopy(_parsed_yaml(str(path), stat.st_mtime_ns, stat.st_size))


@lru_cache(maxsize=256)
def _parsed_yaml(path: str, mtime_ns: int, size: int) -> dict[str, Any]:
    try:
        return yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise KDBenchError(f"{path}{where}: not valid YAML ({getattr(error, 'problem', error)})") from None


# ------------------------------------------------------------------------------------------------- parsers
def resolve_class(class_path: str, default_module: str) -> type | None:
    module_name, _, class_name = class_path.rpartition(".")
    try:
        found = getattr(importlib.import_module(module_name or default_module), class_name)
    except (ImportError, AttributeError, ValueError):
        return None
    return found if isinstance(found, type) else None


def method_or_none(method: str) -> type | None:
    """The ``kd_modules`` class of ``method`` (:func:`kd_modules.method_class`), None while kdbench has none."""
    from kd_modules import UnknownMethodError, method_class

    try:
        return method_class(method)
    except UnknownMethodError:
        return None


@cache
def _parser(cls: type, skip: frozenset[str]) -> ArgumentParser:
    if cls.__name__ == "Trainer":
        from lightning.pytorch.cli import LightningArgumentParser

        parser: ArgumentParser = LightningArgumentParser(exit_on_error=False)
        parser.add_lightning_class_args(cls, None)  # type: ignore[attr-defined]
        return parser
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(cls, skip=set(skip), fail_untyped=False)
    return parser


def _actions(parser: ArgumentParser) -> dict[str, Any]:
    return {a.dest: a for a in parser._actions if a.dest not in ("help", "config")}  # noqa: SLF001


def _accepted(parser: ArgumentParser, group: str = "") -> list[str]:
    prefix = f"{group}." if group else ""
    names = {d[len(prefix) :].split(".", 1)[0] for d in _actions(parser) if d.startswith(prefix) and d != group}
    return sorted(names)


def _choices(annotation: Any) -> tuple[Any, ...] | None:
    if typing.get_origin(annotation) is typing.Literal:
        return typing.get_args(annotation)
    members = typing.get_args(annotation)
    literals = [m for m in members if typing.get_origin(m) is typing.Literal]
    if literals and all(m is type(None) or m in literals for m in members):
        return tuple(v for m in literals for v in typing.get_args(m)) + ((None,) if type(None) in members else ())
    return None


def _suggestion(name: str, accepted: list[str]) -> str:
    close = difflib.get_close_matches(name, accepted, n=1)
    return f"; did you mean {close[0]}?" if close else ""


def _one_line(error: Exception, parser: ArgumentParser, args: dict[str, Any], what: str) -> str:
    """jsonargparse's verdict on ``args`` as one line: the bad key or value, and what is accepted."""
    text = str(error).strip()
    unknown = re.search(r"Option '([^']+)' is not accepted", text) or re.search(r"Unrecognized arguments: (\S+)", text)
    if unknown:
        name = unknown.group(1).lstrip("-")
        accepted = _accepted(parser)
        return f"{what} does not accept argument {name} (accepts: {', '.join(accepted)}{_suggestion(name, accepted)})"
    nested = re.search(r"Group '([^']+)' does not accept option '([^']+)'", text)
    if nested:
        group, name = nested.groups()
        accepted = _accepted(parser, group)
        return (
            f"{what} does not accept argument {group}.{name} "
            f"({group} accepts: {', '.join(accepted)}{_suggestion(name, accepted)})"
        )
    key = re.search(r'Parser key "([^"]+)"', text)
    if key:
        dotted = key.group(1)
        value = get_dotted(args, dotted, None)
        action = _actions(parser).get(dotted)
        choices = _choices(getattr(action, "_typehint", None))
        if choices is not None:
            return f"{what} argument {dotted} is {value!r}, not one of {', '.join(repr(c) for c in choices)}"
        detail = " ".join(line.strip() for line in text.splitlines()[1:] if line.strip())
        return f"{what} argument {dotted} is {value!r}: {detail or text}"
    return f"{what}: " + " ".join(line.strip() for line in text.splitlines() if line.strip())


@lru_cache(maxsize=16384)
def _verdict(cls: type, skip: frozenset[str], encoded: str, what: str) -> str | None:
    args = json.loads(encoded)
    parser = _parser(cls, skip)
    try:
        parser.parse_object(copy.deepcopy(args))
    except Exception as error:  # noqa: BLE001 - every parse failure is a verdict on the config
        return _one_line(error, parser, args, what)
    return None


def check_arguments(cls: type, args: dict[str, Any], what: str, skip: frozenset[str] = frozenset()) -> str | None:
    """Why jsonargparse rejects ``cls(**args)``'s arguments (one line, ``what`` first), or None."""
    return _verdict(cls, skip, json.dumps(args, sort_keys=True, default=str), what)


@cache
def _defaults(cls: type, skip: frozenset[str]) -> dict[str, Any]:
    parser = _parser(cls, skip)
    required = {d for d, a in _actions(parser).items() if getattr(a, "required", False)}
    defaults = parser.get_defaults().as_dict()
    return {k: v for k, v in defaults.items() if k not in required and k not in ("config", "__default_config__")}


def complete_arguments(
    cls: type, args: dict[str, Any], skip: frozenset[str] = frozenset(), keep: frozenset[str] = frozenset()
) -> None:
    """Write the defaults jsonargparse reads from ``cls``'s signature into ``args`` where it leaves them out.

    Given values are kept as written (a nested group gets its missing fields), so completing a config never
    changes what a row or file states.  ``skip``: arguments the parser leaves out (as in :func:`check_arguments`);
    ``keep``: arguments not completed.
    """
    for name, default in _defaults(cls, skip).items():
        if name in keep:
            continue
        if name not in args:
            args[name] = _plain(copy.deepcopy(default))
        elif isinstance(default, dict) and isinstance(args[name], dict):
            args[name] = {**_plain(copy.deepcopy(default)), **args[name]}


def _plain(value: Any) -> Any:
    """Defaults as config data: tuples as lists, recursively."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
