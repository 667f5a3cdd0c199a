"""Typed configs from YAML: dataclasses in, one-line errors naming the field, the value and the fix.

`load_config(Cls, path, overrides)` reads YAML, applies `--set a.b=value` overrides, and builds
`Cls` field by field against its type hints. Unknown keys, wrong types and failed checks raise
`ConfigError` before any actor or worker starts. Each dataclass may define `check()` for checks
across fields; it raises ConfigError too.
"""

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

import yaml

from workers.errors import ConfigError

T = TypeVar("T")


def load_config(cls: type[T], path: Path | None = None, overrides: list[str] = ()) -> T:
    """Build `cls` from a YAML file (or defaults when path is None) plus `key.path=value` overrides."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist: pass --config with a YAML file (see jobs/configs/)")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"config file {path} is not valid YAML: {str(error).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping of fields, not {type(data).__name__}")
    for override in overrides:
        apply_override(data, override)
    return from_dict(cls, data)


def apply_override(data: dict, override: str) -> None:
    """Set `a.b.c=value` in nested dicts; the value is parsed as YAML (numbers, lists, booleans)."""
    key, sep, raw = override.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {override!r}: write overrides as field.path=value, e.g. --set train.steps=100")
    *parents, leaf = key.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {override!r}: {part} is not a section of the config")
    node[leaf] = yaml.safe_load(raw)


def from_dict(cls: type[T], data: Any, where: str = "") -> T:
    """Construct dataclass `cls` from a mapping, checking every key and type."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping of fields, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{join(where, unknown[0])}: unknown field; known fields of {where or 'the config'} are {', '.join(fields)}"
        )
    hints = get_type_hints(cls)
    values = {name: convert(hints[name], value, join(where, name)) for name, value in data.items()}
    try:
        instance = cls(**values)
    except TypeError as error:  # a required field without a default
        raise ConfigError(f"{where or 'config'}: {error}") from None
    check = getattr(instance, "check", None)
    if callable(check):
        check(where)
    return instance


def convert(hint: Any, value: Any, where: str) -> Any:
    """Check and convert one value against a type hint."""
    origin, args = get_origin(hint), get_args(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return convert(arg, value, where)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0])
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(str, args))}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item = args[0] if args else Any
        items = [convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        item = args[1] if len(args) == 2 else Any
        return {key: convert(item, v, f"{where}.{key}") for key, v in value.items()}
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML 1.1 reads 2e-4 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{where}: expected float, got {value!r}") from None
    if hint is Path and isinstance(value, str):
        return Path(value)
    if hint in (int, float, str, bool) and not (
        isinstance(value, hint) and not (hint is not bool and isinstance(value, bool))
    ):
        raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


def join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def require(condition: bool, where: str, message: str) -> None:
    """Raise ConfigError(f"{where}: {message}") unless condition; `message` names the value and the fix."""
    if not condition:
        raise ConfigError(f"{where}: {message}")


def to_dict(config: Any) -> dict:
    """A config as plain YAML-able data (paths as strings, tuples as lists)."""

    def plain(value: Any) -> Any:
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(config))


def flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}: config params for MLflow and Tune search spaces."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat
