"""Bad input to ``python -m benchmarks.cli`` as one line naming the bad value and the valid choices (exit 2).

Two places catch it before anything is loaded or written:

* :class:`KDBenchArgumentParser` — jsonargparse's parse errors (a usage dump of dozens of lines, often without the
  key at fault) become one :class:`~benchmarks.errors.KDBenchError`: an unknown method or dataset lists the valid
  ones; an unknown key suggests the nearest accepted one (``difflib``); a value of the wrong type or outside a
  ``Literal`` names the key, the value and the choices;
* :func:`check_config_files` (YAML syntax errors with the file and line, missing config files),
  :func:`check_ckpt_path` (a truncated ``--ckpt_path``, before LightningCLI loads it) and :func:`check_config`
  (values that parse but cannot make a run: lr <= 0, a zero-length run, an unwritable run folder, online W&B
  without credentials, a missing dataset).
"""

from __future__ import annotations

import difflib
import inspect
import netrc
import os
import re
import sys
import typing
from collections.abc import Iterable
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch.cli import LightningArgumentParser

from benchmarks.errors import KDBenchError

__all__ = [
    "KDBenchArgumentParser",
    "KDBenchError",
    "check_ckpt_path",
    "check_config",
    "check_config_files",
    "one_line",
    "check_writable",
]

#: The arguments of the CLI call being parsed (for the method a bad key belongs to).
_CURRENT_ARGS: list[str] = []


# ---------------------------------------------------------------------------------------------- candidates
def _init_arguments(cls: type) -> list[str]:
    """Argument names of ``cls(...)``, following ``**kwargs`` up the MRO; dataclass groups as ``group.field``."""
    names: dict[str, None] = {}  # an ordered set
    for klass in cls.__mro__:
        if "__init__" not in vars(klass) or klass is object:
            continue
        try:
            hints = typing.get_type_hints(vars(klass)["__init__"])
        except Exception:  # noqa: BLE001 - unresolvable annotations: names only
            hints = {}
        parameters = inspect.signature(vars(klass)["__init__"]).parameters
        for name, parameter in parameters.items():
            if name == "self" or parameter.kind in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL):
                continue
            names[name] = None
            hint = hints.get(name)
            for candidate in typing.get_args(hint) or (hint,):
                if isinstance(candidate, type) and is_dataclass(candidate):
                    names.update(dict.fromkeys(f"{name}.{f.name}" for f in fields(candidate)))
        if not any(p.kind == p.VAR_KEYWORD for p in parameters.values()):
            break
    return list(names)


def _methods() -> list[str]:
    from kd_modules import method_names

    return method_names()


def _datamodules() -> dict[str, type]:
    from datamodules import DATASETS

    return {cls.__name__: cls for cls in DATASETS.values()}


def _class_named(group: str, name: str) -> type | None:
    short = name.rsplit(".", 1)[-1]
    if group == "model":
        from benchmarks.configs import method_or_none

        return method_or_none(short)
    return _datamodules().get(short)


def _selected(group: str) -> str | None:
    """The class ``--model`` / ``--data`` names in the call (command line, else a ``--config`` file)."""
    args = list(_CURRENT_ARGS)
    chosen = None
    for i, arg in enumerate(args):
        if arg == f"--{group}" and i + 1 < len(args):
            chosen = args[i + 1]
        elif arg.startswith(f"--{group}="):
            chosen = arg.split("=", 1)[1]
        elif arg in ("--config", "-c") and i + 1 < len(args):
            try:
                loaded = yaml.safe_load(Path(args[i + 1]).read_text()) or {}
            except (OSError, yaml.YAMLError):
                continue
            value = loaded.get(group) if isinstance(loaded, dict) else None
            if isinstance(value, dict) and value.get("class_path"):
                chosen = str(value["class_path"])
            elif isinstance(value, str):
                chosen = value
    return chosen


def _parser_keys(parser: Any) -> list[str]:
    dests = (getattr(action, "dest", None) for action in getattr(parser, "_actions", []))
    return [d for d in dests if d and d not in ("help", "config", "print_config") and not d.startswith("==")]


def _keys_parser(parser: Any) -> Any:
    """The parser whose keys a bad key belongs to: the subcommand's (``fit``) when ``parser`` is the main one."""
    action = getattr(parser, "_subcommands_action", None)
    choices = getattr(action, "_name_parser_map", None) or {}
    return next((choices[arg] for arg in _CURRENT_ARGS if arg in choices), parser)


def _nearest(key: str, candidates: Iterable[str]) -> str | None:
    candidates = list(dict.fromkeys(candidates))
    found = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    if not found:
        by_leaf = {c.rsplit(".", 1)[-1]: c for c in candidates}
        leaves = difflib.get_close_matches(key.rsplit(".", 1)[-1], list(by_leaf), n=1, cutoff=0.6)
        found = [by_leaf[leaves[0]]] if leaves else []
    return found[0] if found else None


def _listing(values: Iterable[str], limit: int = 60) -> str:
    values = list(values)
    shown = ", ".join(values[:limit])
    return shown + (f", ... ({len(values) - limit} more)" if len(values) > limit else "")


# ------------------------------------------------------------------------------------------------ messages
def _no_argument(cls: type, group: str, name: str) -> str:
    """``<Class> has no argument N (did you mean ...?); valid: ...`` for an argument of the selected class."""
    valid = _init_arguments(cls)
    near = _nearest(name, valid)
    hint = f" (did you mean {group}.init_args.{near}?)" if near else ""
    return f"{cls.__name__} has no argument {name!r}{hint}; valid: {_listing(valid)}"


def _unknown_key(key: str, parser: Any) -> str:
    """``unknown key K (did you mean N?); valid: ...`` for a key no parser or class accepts."""
    key = key.lstrip("-").split("=", 1)[0]
    group = key.split(".", 1)[0]
    prefix = next((p for p in ("model.init_args.", "data.init_args.", "model.", "data.") if key.startswith(p)), "")
    leaf = key[len(prefix) :]
    if group in ("model", "data") and key != group:
        cls = _class_named(group, _selected(group) or "")
        if cls is not None:
            return _no_argument(cls, group, leaf)
    top = _parser_keys(_keys_parser(parser))
    pool = list(top)
    for name in ("model", "data"):
        selected = _class_named(name, _selected(name) or "")
        if selected is not None:
            pool += [f"{name}.init_args.{a}" for a in _init_arguments(selected)]
    near = _nearest(key, pool)
    hint = f" (did you mean {near}?)" if near else ""
    same_group = [k for k in top if k.split(".", 1)[0] == group]
    valid = same_group if same_group and len(same_group) < len(top) else sorted({k.split(".", 1)[0] for k in top})
    return f"unknown key {key!r}{hint}; valid{' ' + group + ' keys' if valid is same_group else ''}: {_listing(valid)}"


def _value_error(key: str, body: str) -> str:
    nested = re.search(
        r"Problem with given class_path '[^']+':\s*\n\s*Parser key \"([^\"]+)\":(.*?)(?=\n\s*- |\Z)", body, re.S
    )
    if key in ("model", "data") and nested:  # a bad value of the selected method's (or datamodule's) argument
        return _value_error(f"{key}.{nested.group(1)}", nested.group(2))
    given = re.search(r"(?:Got value|Given value): (.*)", body)
    value = given.group(1).strip() if given else "?"
    if key in ("model", "data") and ("dot import path" in body or "Import path" in body or "class_path" in body):
        name = value.strip("'\"")
        if name.startswith("{"):
            match = re.search(r"class_path'?: '([^']+)'", name)
            name = match.group(1) if match else name
        kind, valid = ("method", _methods()) if key == "model" else ("dataset", sorted(_datamodules()))
        return f"unknown {kind} {name.rsplit('.', 1)[-1]!r} (--{key}); valid: {_listing(valid)}"
    literal = re.search(r"Expected a typing\.Literal\[(.*?)\]", body)
    if literal:
        choices = [c.strip().strip("'\"") for c in literal.group(1).split(",")]
        return f"{key}: {value!r} is not one of: {', '.join(choices)}"
    expected = re.search(r"Expected a <class '([\w.]+)'>", body)
    if expected:
        return f"{key}: {value!r} is not a valid {expected.group(1)}"
    detail = [line.strip(" -") for line in body.splitlines() if line.strip(" -")]
    return f"{key}: {detail[0] if detail else body.strip()}"


def one_line(message: str, parser: Any = None) -> str:
    """jsonargparse's error ``message`` as one line naming the bad value and the valid choices."""
    text = message.strip()
    match = re.search(r"Problem with given class_path '([^']+)':\s*\n\s*Option '([^']+)' is not accepted", text)
    if match:
        group = "model" if _class_named("model", match.group(1)) is not None else "data"
        cls = _class_named(group, match.group(1))
        if cls is not None:
            return _no_argument(cls, group, match.group(2))
    match = re.search(r"Option '([^']+)' is not accepted", text) or re.search(r"does not accept option '([^']+)'", text)
    if match:
        key = match.group(1)
        if "does not accept" not in text and "." not in key:
            # an argument of the selected method (or datamodule): find which
            for group in ("model", "data"):
                cls = _class_named(group, _selected(group) or "")
                if cls is not None and _nearest(key, _init_arguments(cls)) is not None:
                    return _unknown_key(f"{group}.init_args.{key}", parser)
        return _unknown_key(key, parser)
    match = re.search(r"[Uu]nrecognized arguments: (.+)", text)
    if match:
        tokens = [t for t in match.group(1).split() if t.startswith("--")]
        if tokens:
            return _unknown_key(tokens[0], parser)
    match = re.search(r'Parser key "config":\s*(.*)', text)
    if match:
        return f"--config: {match.group(1).strip()}"
    match = re.search(r'Parser key "([^"]+)":(.*)', text, re.DOTALL)
    if match:
        return _value_error(match.group(1), match.group(2))
    match = re.search(r"the following arguments are required: (.+)", text)
    if match:
        missing = [m.strip().split(".", 1)[-1] for m in match.group(1).split(",")]
        described = {
            "model": f"--model (a method: {_listing(_methods(), 12)})",
            "data": f"--data (a dataset: {', '.join(sorted(_datamodules()))})",
        }
        return "missing " + " and ".join(described.get(name, f"--{name}") for name in missing)
    if text.startswith("Problems parsing config"):
        detail = " ".join(line.strip() for line in text.splitlines()[1:] if line.strip())
        return f"a config given on the command line is not valid YAML: {detail}"
    lines = [line.strip(" -") for line in text.splitlines() if line.strip(" -")]
    return lines[0] if lines else text


class KDBenchArgumentParser(LightningArgumentParser):
    """LightningCLI's parser with one-line errors (raised as :class:`KDBenchError`, printed by ``user_errors``).

    Abbreviated options are refused (argparse would read ``--trainer.max_epoch 3`` as ``--trainer.max_epochs 3``
    without a word): an unknown key is an error that names the nearest accepted one.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str, ex: Exception | None = None) -> typing.NoReturn:
        from jsonargparse._common import debug_mode_active

        if not self.exit_on_error or debug_mode_active():
            super().error(message, ex)
        raise KDBenchError(one_line(message, self)) from None


# ------------------------------------------------------------------------------------------ config files
def _config_paths(args: list[str]) -> list[str]:
    paths = []
    for i, arg in enumerate(args):
        if arg in ("--config", "-c") and i + 1 < len(args):
            paths.append(args[i + 1])
        elif arg.startswith("--config="):
            paths.append(arg.split("=", 1)[1])
    return paths


def check_config_files(args: Any) -> None:
    """Every ``--config`` file exists and is valid YAML (else one line with the file, line and column)."""
    argv = [str(a) for a in (args if isinstance(args, (list, tuple)) else sys.argv[1:] if args is None else [])]
    _CURRENT_ARGS[:] = argv
    for raw in _config_paths(argv):
        if raw.lstrip().startswith(("{", "[")) or "\n" in raw:
            continue  # an inline YAML/JSON value: jsonargparse reports it
        path = Path(raw)
        if not path.is_file():
            raise KDBenchError(f"--config: config file {path} does not exist")
        try:
            yaml.safe_load(path.read_text())
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
            where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(error, "problem", None) or str(error).splitlines()[0]
            raise KDBenchError(f"--config: YAML syntax error in {path}{where}: {problem}") from None
        except (OSError, UnicodeDecodeError) as error:
            raise KDBenchError(f"--config: cannot read {path} ({type(error).__name__}: {error})") from None


# ------------------------------------------------------------------------------------------ config values
def check_writable(folder: str | Path, what: str) -> None:
    """Refuse a ``folder`` that could not be created or written (checked without writing anything): one line."""
    path = Path(folder).expanduser().absolute()
    probe = next((p for p in (path, *path.parents) if p.exists()), Path(path.anchor))
    if probe.exists() and not probe.is_dir():
        raise KDBenchError(f"{what} {path} cannot be created: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise KDBenchError(f"{what} {path} is not writable ({probe} does not allow writing)")


def wandb_credentials() -> bool:
    """Whether W&B could log online: ``WANDB_API_KEY``, or a netrc entry for the W&B host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = re.sub(r"^https?://", "", os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).split("/")[0]
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def check_config(config: Any, subcommand: str = "fit") -> None:
    """Refuse values that parse but cannot make a run (see the module docstring); ``config`` is the subcommand's
    parsed namespace (jsonargparse's ``Namespace.get`` takes dotted keys)."""
    lr = config.get("model.init_args.optim.lr")
    if isinstance(lr, (int, float)) and not lr > 0:
        raise KDBenchError(f"model.init_args.optim.lr must be > 0 (the SGD learning rate), got {lr}")
    if subcommand == "fit":
        no_metrics = "and record no metrics; give a positive value (or -1 / None for no limit)"
        for key, consequence in (
            ("trainer.max_epochs", f"train no epochs {no_metrics}"),
            ("trainer.max_steps", f"train no optimiser steps {no_metrics}"),
            ("trainer.limit_train_batches", "train nothing; give a positive count or fraction"),
        ):
            value = config.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0:
                raise KDBenchError(f"{key} is 0: the run would {consequence}")
        max_epochs, max_steps = config.get("trainer.max_epochs"), config.get("trainer.max_steps")
        if max_epochs == -1 and max_steps in (None, -1):
            raise KDBenchError("trainer.max_epochs is -1 and trainer.max_steps is -1: the run would never end")
    run_dir = config.get("run.dir")
    if run_dir:
        check_writable(run_dir, "run.dir")
    if config.get("run.wandb") == "online" and not wandb_credentials():
        raise KDBenchError(
            "run.wandb is 'online' but no W&B credentials were found (set WANDB_API_KEY or run `wandb login`); "
            "valid without credentials: auto, offline, disabled"
        )
    cls = _class_named("data", str(config.get("data.class_path") or ""))
    check = getattr(cls, "check_root", None)
    if callable(check):
        check(str(config.get("data.init_args.root", "data")), bool(config.get("data.init_args.download", False)))


def check_ckpt_path(ckpt: Any) -> None:
    """A truncated or corrupt ``--ckpt_path`` file is one line saying so (Lightning's own names pass)."""
    from benchmarks.resume import checkpoint_problem

    if ckpt and ckpt not in ("last", "best", "hpc", "registry"):
        problem = checkpoint_problem(ckpt)
        if problem:
            raise KDBenchError(f"--ckpt_path: {problem}")
