"""Read a TOML file and command-line overrides into a typed ``JobConfig``.

Precedence: command line > TOML file > dataclass defaults. Every value is type-checked against its
dataclass field as it is read; an unknown section or key, a wrong type or a bad value raises
``ConfigError``, which the entry point prints as one ``config error: <file>: <key>: <why>`` line
(exit status 2) before any process group or compute exists.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import json
import sys
import types
import typing
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

from titanwarm.config.errors import ConfigError
from titanwarm.config.sections import JobConfig

CLI = "command line"
FLAGS = ("print_config", "print_schedule", "estimate_memory")
"""Value-less command-line flags (``--print-config``, ``--print-schedule``, ``--estimate-memory``)."""
OPTIONS = {"world_size": int, "device_memory": float}
"""Command-line options with a value that are not config keys (``--world-size N`` and
``--device-memory GIB``, for ``--estimate-memory``)."""


def section_types() -> dict[str, type]:
    """Section name -> its dataclass, in declaration order."""
    hints = typing.get_type_hints(JobConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(JobConfig)}


def field_types(section_cls: type) -> dict[str, Any]:
    """Key name -> resolved type annotation for one section dataclass."""
    hints = typing.get_type_hints(section_cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(section_cls)}


def field_docs(section_cls: type) -> dict[str, str]:
    """Key name -> the docstring literal written under the field in its dataclass."""
    tree = ast.parse(inspect.getsource(section_cls))
    body = tree.body[0].body
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)):
            docs[node.target.id] = inspect.cleandoc(nxt.value.value)
    return docs


def _suggest(name: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(name, allowed, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"{hint}allowed: {', '.join(allowed)}"


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        (item,) = typing.get_args(tp)
        return {str: "a list of strings", int: "a list of integers", float: "a list of numbers"}.get(
            item, "a list of tables")
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[tp]


def coerce(value: Any, tp: Any, from_cli: bool) -> Any:
    """Check ``value`` against annotation ``tp``; command-line strings are parsed first.

    Supports str, int, float, bool, list[str], list[int], list[float], list[dict] (TOML only) and unions of
    those (tried in order). Raises ValueError with a short reason when the value does not fit.
    """
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        for member in typing.get_args(tp):
            try:
                return coerce(value, member, from_cli)
            except ValueError:
                continue
        raise ValueError(f"expected {_type_name(tp)}, got {value!r}")
    if typing.get_origin(tp) is list:
        (item,) = typing.get_args(tp)
        if from_cli:
            if item is dict:
                raise ValueError("a list of tables can only be set in the TOML file")
            value = [v.strip() for v in value.split(",") if v.strip()]
            if item in (int, float):
                value = [coerce(v, item, True) for v in value]
        if item is float and isinstance(value, list):  # TOML writes 1 for 1.0
            value = [float(v) if type(v) is int else v for v in value]
        if not isinstance(value, list) or not all(
                isinstance(v, item) and not (item is int and isinstance(v, bool)) for v in value):
            raise ValueError(f"expected {_type_name(tp)}, got {value!r}")
        return value
    if tp is bool:
        if from_cli:
            if value.lower() not in ("true", "false"):
                raise ValueError(f"expected true or false, got {value!r}")
            return value.lower() == "true"
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if from_cli:
            try:
                return int(value)
            except ValueError:
                raise ValueError(f"expected an integer, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if from_cli:
            try:
                return float(value)
            except ValueError:
                raise ValueError(f"expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config field type {tp!r}")  # a schema bug, not user input


def _apply(cfg: JobConfig, section: str, key: str, value: Any, source: str, from_cli: bool,
           origins: dict[str, str]) -> None:
    sections = section_types()
    if section not in sections:
        raise ConfigError(source, f"[{section}]", f"unknown section; {_suggest(section, list(sections))}")
    types = field_types(sections[section])
    if key not in types:
        raise ConfigError(source, f"{section}.{key}", f"unknown key; {_suggest(key, list(types))}")
    try:
        setattr(getattr(cfg, section), key, coerce(value, types[key], from_cli))
    except ValueError as e:
        raise ConfigError(source, f"{section}.{key}", str(e)) from None
    origins[f"{section}.{key}"] = source


def split_argv(argv: list[str]) -> tuple[str | None, dict[str, Any], list[tuple[str, str]]]:
    """Split argv into (config path, flags and options, [(dotted key, raw value)]).

    Accepts ``--config PATH`` (or torchtitan's ``--job.config_file PATH``), the flags in ``FLAGS``
    (True when given), the ``OPTIONS`` (None when not given) and overrides as ``--section.key
    value`` or ``--section.key=value``.
    """
    path: str | None = None
    flags: dict[str, Any] = {name: False for name in FLAGS} | {name: None for name in OPTIONS}
    overrides: list[tuple[str, str]] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise ConfigError(CLI, arg, "unexpected argument; use --config PATH and --section.key value")
        name, eq, value = arg[2:].partition("=")
        if name.replace("-", "_") in FLAGS:
            if eq:
                raise ConfigError(CLI, arg, "this flag takes no value")
            flags[name.replace("-", "_")] = True
            i += 1
            continue
        if not eq:
            if i + 1 >= len(argv):
                raise ConfigError(CLI, arg, "missing value")
            value = argv[i + 1]
            i += 1
        i += 1
        if name in ("config", "job.config_file"):
            path = value
        elif name.replace("-", "_") in OPTIONS:
            kind = OPTIONS[name.replace("-", "_")]
            try:
                flags[name.replace("-", "_")] = kind(value)
            except ValueError:
                raise ConfigError(CLI, arg, f"expected {'an integer' if kind is int else 'a number'}, "
                                            f"got {value!r}") from None
        elif "." in name:
            overrides.append((name, value))
        else:
            raise ConfigError(CLI, arg, "expected --section.key value, --config PATH or one of "
                                        + ", ".join("--" + f.replace("_", "-") for f in FLAGS))
    return path, flags, overrides


def load_config(argv: list[str]) -> tuple[JobConfig, dict[str, Any]]:
    """Build the resolved ``JobConfig`` from argv (see ``split_argv``) and validate it (for
    ``--estimate-memory``: on ``--world-size`` ranks, without requiring the input files)."""
    from titanwarm.config.validate import validate

    path, flags, overrides = split_argv(argv)
    cfg = JobConfig()
    origins: dict[str, str] = {}
    source = CLI
    if path is not None:
        source = path
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(path, "", "file not found") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(path, "", f"not valid TOML: {e}") from None
        for section, table in data.items():
            if not isinstance(table, dict):
                raise ConfigError(path, section, "expected a [section] table")
            for key, value in table.items():
                _apply(cfg, section, key, value, path, from_cli=False, origins=origins)
    for dotted, raw in overrides:
        section, _, key = dotted.partition(".")
        _apply(cfg, section, key.replace("-", "_"), raw, CLI, from_cli=True, origins=origins)
    if flags["estimate_memory"]:
        validate(cfg, source, origins, world_size=flags["world_size"] or 1, inputs=False)
    else:
        validate(cfg, source, origins)
    return cfg, flags


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    return repr(value)


def to_toml(cfg: JobConfig) -> str:
    """The resolved config as TOML, each key preceded by its documentation as a comment."""
    lines: list[str] = []
    for section, cls in section_types().items():
        lines.append(f"[{section}]")
        docs = field_docs(cls)
        for key in field_types(cls):
            for doc_line in docs.get(key, "").splitlines():
                lines.append(f"# {doc_line}")
            lines.append(f"{key} = {_toml_value(getattr(getattr(cfg, section), key))}")
        lines.append("")
    return "\n".join(lines)
