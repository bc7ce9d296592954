"""Typed, frozen settings validated by pydantic, and the one way a bad value is reported.

Every config object (train, measure, optimize, the objective) is a `Settings`: strict types (2.5
is not an int, "no" is not a bool), every number finite (inf and nan are refused wherever they
come from: a flag, TOML's inf, JSON's Infinity), unknown keys refused, ranges checked, and every error names
the key and where the value came from (a config file and its section, or a command-line flag).
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from edgeopt.errors import ConfigError

S = TypeVar("S", bound="Settings")
# The sections a config file may have; a file without any of them is one command's settings.
SECTIONS = ("train", "optimize", "search")


class Settings(BaseModel):
    """Base of every config object: frozen, strict, no unknown keys. Built from user input with
    `build_settings` (which names each bad key's source); built in code, a bad value raises
    pydantic's ValidationError (the CLI reports that in one line too)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)

    def to_jsonable(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def replaced(self: S, **changes: Any) -> S:
        """A copy with some fields changed, validated again."""
        return type(self)(**{**self.model_dump(), **changes})


def _known_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The field names allowed at `loc` (the parent of an unknown key)."""
    current: Any = model
    for part in loc:
        field = current.model_fields.get(part) if isinstance(part, str) else None
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        current = annotation
    return sorted(current.model_fields)


def describe_errors(
    exc: ValidationError, model: type[BaseModel], where: Callable[[tuple[Any, ...]], str] | None = None
) -> str:
    """One line for all of a validation's errors: `<where the value came from>: <what is wrong>`."""
    where = where or (lambda loc: ".".join(str(p) for p in loc) or model.__name__)
    parts = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        message = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            known = _known_keys(model, loc[:-1])
            message = "unknown key" + (f"; known keys: {', '.join(known)}" if known else "")
        elif "input" in err and err["type"] not in ("missing", "value_error"):
            message += f" (got {err['input']!r})"
        parts.append(f"{where(loc)}: {message}")
    return "; ".join(parts)


def read_config_file(path: Path | None, section: str) -> dict[str, Any]:
    """The `section` of a TOML or JSON config file, as a (nested) dict; {} without a file."""
    if path is None:
        return {}
    if path.is_dir():
        raise ConfigError(f"--config {path} is a folder; pass a TOML or JSON file")
    if not path.is_file():
        raise ConfigError(f"--config {path} does not exist; pass a TOML or JSON file")
    try:
        text = path.read_text()
        raw = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:  # TOMLDecodeError and JSONDecodeError are ValueErrors
        raise ConfigError(f"cannot parse {path} ({exc}); use TOML or JSON") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} holds a JSON {type(raw).__name__}, not an object of settings; e.g. {{\"{section}\": {{...}}}}")
    if not set(raw) & set(SECTIONS):
        return raw
    stray = sorted(set(raw) - set(SECTIONS))
    if stray:
        raise ConfigError(f"{path}: unknown section(s) {', '.join(stray)}; known sections: {', '.join(SECTIONS)}")
    values = raw.get(section, {})
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: [{section}] must be a table of settings, not {values!r}")
    return values


def build_settings(
    model: type[S], file_values: Mapping[str, Any], flags: Mapping[str, tuple[str, Any]],
    file: Path | None = None, section: str = "",
) -> S:
    """defaults <- config file <- flags. `flags` maps a dotted key (e.g. "measure.threads") to
    (the flag as typed, its value); a flag given as None was not given."""
    merged: dict[str, Any] = json.loads(json.dumps(dict(file_values)))  # a deep copy of plain values
    from_flags: dict[tuple[str, ...], str] = {}
    for dotted, (flag, value) in flags.items():
        if value is None:
            continue
        *parents, leaf = dotted.split(".")
        node: Any = merged
        for parent in parents:
            node = node.setdefault(parent, {}) if isinstance(node, dict) else None
        if not isinstance(node, dict):  # the file has a non-table there: validation names it
            continue
        node[leaf] = value
        shown = ",".join(map(str, value)) if isinstance(value, tuple) else value  # as typed: a,b
        from_flags[tuple(dotted.split("."))] = f"{flag} {shown}"

    def where(loc: tuple[Any, ...]) -> str:
        for length in range(len(loc), 0, -1):
            if loc[:length] in from_flags:
                return from_flags[loc[:length]]
        key = ".".join(str(p) for p in loc)
        return f"{file} [{section}] {key}" if file else key

    try:
        return model.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc, model, where)) from None
