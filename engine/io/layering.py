"""Config layering: read a recipe's config from TOML layers, strictly, with clear messages.

`build_config` structures the recipe's config class from layers, lowest first: the class
defaults, the recipes.toml entry, a `--config` file, `--set KEY=VALUE` flags. Every mistake
(unknown key, wrong type, out-of-range value) is found in one pass and raised together, each
naming the file or flag it came from. What a valid config is lives in `engine.core.config`.
"""

from __future__ import annotations

import re
import sys
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import cattrs
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError, IterableValidationError

from engine.core.config import range_errors, to_dict, toml_value
from engine.core.errors import UserError, close_match, describe_value, raise_all
from engine.io.config_types import check_writable_as_toml, resolve_config_types

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# --- strict structuring ----------------------------------------------------------------------

class _WrongType(TypeError):
    def __init__(self, expected: str, value: Any) -> None:
        super().__init__(f"expected {expected}, found {describe_value(value)}")
        self.expected = expected
        self.value = value


def _strict_int(value: Any, _: type) -> int:
    if type(value) is not int:
        raise _WrongType("int", value)
    return value


def _strict_float(value: Any, _: type) -> float:
    if type(value) not in (int, float):
        raise _WrongType("float", value)
    return float(value)


def _strict_bool(value: Any, _: type) -> bool:
    if type(value) is not bool:
        raise _WrongType("bool (true or false)", value)
    return value


def _strict_str(value: Any, _: type) -> str:
    if type(value) is not str:
        raise _WrongType("str", value)
    return value


def _strict_str_tuple(value: Any, _: type) -> tuple[str, ...]:
    # cattrs would iterate a lone string into its characters: "csv" -> ("c", "s", "v")
    if type(value) not in (list, tuple):
        raise _WrongType('a list of strings, e.g. ["csv"]', value)
    for item in value:
        _strict_str(item, str)
    return tuple(value)


def make_converter() -> cattrs.Converter:
    """A cattrs converter that refuses unknown keys and never coerces (1.9 is not an int)."""
    conv = cattrs.Converter(forbid_extra_keys=True)
    conv.register_structure_hook(int, _strict_int)
    conv.register_structure_hook(float, _strict_float)
    conv.register_structure_hook(bool, _strict_bool)
    conv.register_structure_hook(str, _strict_str)
    conv.register_structure_hook_func(lambda tp: tp == tuple[str, ...], _strict_str_tuple)
    return conv


CONVERTER = make_converter()


# --- layers and where each key came from -----------------------------------------------------

@attrs.frozen
class Layer:
    """One source of config values: a table of a TOML file, or one `--set` flag.

    `where` renders the place a key at `path` came from, e.g. `recipes.toml [ranking_v2.train]`.
    """

    data: Mapping[str, Any]
    source: str                     # "recipes.toml", "run.toml" or "--set train.epochs=3"
    table: str | None = None        # the TOML table holding the config ("ranking_v2")
    is_flag: bool = False

    def where(self, path: Sequence[str]) -> str:
        """Where a key of this layer came from, for a message: the file and table, or the flag."""
        if self.is_flag:
            return self.source
        parent = [self.table] if self.table else []
        parent += list(path[:-1])
        return f"{self.source} [{'.'.join(parent)}]" if parent else self.source


def _merge(layers: Sequence[Layer]) -> tuple[dict, dict[tuple, Layer]]:
    merged: dict = {}
    origin: dict[tuple, Layer] = {}

    def put(target: dict, data: Mapping, prefix: tuple, layer: Layer) -> None:
        for key, value in data.items():
            path = prefix + (key,)
            if isinstance(value, Mapping):
                if not isinstance(target.get(key), dict):
                    target[key] = {}
                put(target[key], value, path, layer)
            else:
                target[key] = value
            origin[path] = layer

    for layer in layers:
        put(merged, layer.data, (), layer)
    return merged, origin


def _fields_of(cls: type, path: Sequence[str]) -> list[str] | None:
    for key in path:
        if not attrs.has(cls):
            return None
        field = attrs.fields_dict(cls).get(key)
        if field is None:
            return None
        cls = _attrs_type(field.type)
    return [f.name for f in attrs.fields(cls)] if attrs.has(cls) else None


def _attrs_type(tp: Any) -> Any:
    if isinstance(tp, str):  # unresolved annotation; attrs.resolve_types fixes most
        return None
    for arg in typing.get_args(tp) or (tp,):
        if attrs.has(arg):
            return arg
    return tp


def _lookup(data: Mapping, path: Sequence[str]) -> Any:
    for key in path:
        data = data[key]
    return data


def _structure_errors(exc: BaseException, path: tuple) -> list[tuple[tuple, BaseException]]:
    """Flatten cattrs' exception groups to (path, leaf exception)."""
    if isinstance(exc, (ClassValidationError, IterableValidationError)):
        out = []
        for sub in exc.exceptions:
            notes = getattr(sub, "__notes__", [])
            name = next((getattr(n, "name", None) for n in notes
                         if getattr(n, "name", None) is not None), None)
            index = next((getattr(n, "index", None) for n in notes
                          if getattr(n, "index", None) is not None), None)
            sub_path = path + ((name,) if name is not None else
                               (str(index),) if index is not None else ())
            out += _structure_errors(sub, sub_path)
        return out
    return [(path, exc)]


def build_config(config_cls: type, layers: Sequence[Layer]) -> Any:
    """Structure `config_cls` from `layers` (lowest first), or raise every mistake at once."""
    resolve_config_types(config_cls)
    merged, origin = _merge(layers)

    def where(path: tuple) -> str:
        layer = origin.get(path)
        return layer.where(path) if layer else f"defaults of {config_cls.__name__}"

    errors: list[UserError] = []
    with attrs.validators.disabled():
        try:
            cfg = CONVERTER.structure(merged, config_cls)
        except (ClassValidationError, IterableValidationError) as group:
            cfg = None
            for path, leaf in _structure_errors(group, ()):
                errors += _leaf_errors(config_cls, merged, path, leaf, where)
        except Exception as exc:  # a top-level value of the wrong shape
            raise UserError("the config is not a table of tables", where=where(()),
                            expected=f"tables of {config_cls.__name__}",
                            found=str(exc)) from exc
    raise_all(errors)
    raise_all(range_errors(cfg, where))
    check_writable_as_toml(cfg, where)
    return cfg


def _leaf_errors(cls: type, merged: Mapping, path: tuple, leaf: BaseException,
                 where: Any) -> list[UserError]:
    if isinstance(leaf, ForbiddenExtraKeysError):
        known = [f.name for f in attrs.fields(leaf.cl)]
        out = []
        for key in sorted(leaf.extra_fields):
            key_path = path + (key,)
            value = _lookup(merged, key_path)
            out.append(UserError(
                f"unknown config key '{'.'.join(key_path)}'", where=where(key_path),
                expected="one of " + ", ".join(known), found=f"{key} = {toml_value(value)}",
                hint=close_match(key, known)))
        return out
    dotted = ".".join(path)
    if isinstance(leaf, _WrongType):
        return [UserError(f"wrong type for config key '{dotted}'", where=where(path),
                          expected=leaf.expected, found=describe_value(leaf.value))]
    if isinstance(leaf, KeyError):
        return [UserError(f"missing config key '{dotted}'", where=where(path[:-1] or path),
                          expected=f"a value for '{dotted}' (it has no default)",
                          found="nothing")]
    try:
        value = _lookup(merged, path)
        found = describe_value(value)
    except (KeyError, TypeError):
        found = str(leaf)
    fields = _fields_of(cls, path)
    expected = "a table with keys " + ", ".join(fields) if fields else str(leaf) or "a valid value"
    return [UserError(f"invalid value for config key '{dotted}'", where=where(path),
                      expected=expected, found=found)]


# --- reading the layers ----------------------------------------------------------------------

_BARE_WORD = re.compile(r"^[A-Za-z0-9_\-./:]+$")


def parse_set(flag: str) -> Layer:
    """`--set train.epochs=3` as a layer; VALUE is TOML, or a bare word taken as a string."""
    where = f"--set {flag}"
    if "=" not in flag:
        raise UserError("--set needs KEY=VALUE", where=where, expected="KEY=VALUE, e.g. "
                        "train.epochs=3", found=flag)
    key, raw = flag.split("=", 1)
    key = key.strip()
    if not key or not all(re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", p) for p in key.split(".")):
        raise UserError("--set has an invalid key", where=where,
                        expected="a dotted key such as train.learning_rate", found=repr(key))
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        if not _BARE_WORD.match(raw):
            raise UserError("--set value is not a TOML value", where=where,
                            expected='a TOML value (3, 1e-3, true, "cpu", [1, 2]) or one bare '
                            "word", found=repr(raw),
                            hint='quote strings with spaces: --set \'key="a b"\'') from None
        value = raw
    data: dict = {}
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return Layer(data, where, is_flag=True)


def read_toml(path: Path, what: str) -> dict:
    """A TOML file as a dict, or a UserError naming the file, line and column."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{what} not found", where=str(path), expected="an existing TOML file",
                        found="no such file") from None
    except OSError as exc:
        raise UserError(f"{what} cannot be read", where=str(path), expected="a readable file",
                        found=exc.strerror or str(exc)) from None
    except UnicodeDecodeError as exc:   # raised by the read, before any TOML is parsed
        raise UserError(f"{what} is not valid TOML", where=str(path),
                        expected="TOML as UTF-8 text",
                        found=f"byte 0x{exc.object[exc.start]:02x} at offset {exc.start}, "
                              f"not UTF-8") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{what} is not valid TOML", where=str(path),
                        expected="TOML (https://toml.io)", found=str(exc)) from None


def config_file_layer(path: str | Path) -> Layer:
    """`--config FILE`: a TOML file with the recipe's tables (`[train]`, `[model]`, ...)."""
    return Layer(read_toml(Path(path), "--config file"), str(path))


def to_toml(cfg: Any) -> str:
    """The config as TOML that `--config` takes back."""
    import tomli_w  # deferred: start-up time
    return tomli_w.dumps(to_dict(cfg))
