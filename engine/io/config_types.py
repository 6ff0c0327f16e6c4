"""A recipe's config as the engine needs it: its classes' annotations resolved, and every
value writable to config.toml; or one clear error, before anything runs.

With `from __future__ import annotations` every annotation is a string, evaluated later in the
class's module namespace; a config class defined inside a function names types (often its own
sub-config classes) that the module does not hold. Those are found through the fields' defaults
(`attrs.Factory(ModelConfig)`, `ModelConfig()`), which hold the classes themselves; what still
cannot be resolved is refused (exit 2) before anything runs.
"""

from __future__ import annotations

import sys
import typing
from typing import Any

import attrs

from engine.core.config import to_dict
from engine.core.errors import UserError, describe_value


def resolve_config_types(cls: type) -> None:
    """Resolve the annotations of `cls` and of every attrs class its fields hold, in place
    (attrs.resolve_types), or raise a UserError naming the class and the annotation."""
    _resolve(cls, set())


def _resolve(cls: type, seen: set) -> None:
    if cls in seen:
        return
    seen.add(cls)
    module = sys.modules.get(cls.__module__)
    globalns = dict(vars(module)) if module is not None else {}
    try:
        attrs.resolve_types(cls, globalns=globalns, localns=_local_names(cls))
    except NameError as exc:
        field = _unresolved_field(cls, globalns)
        raise UserError(
            "the config class's annotations cannot be resolved",
            where=f"{cls.__module__}.{cls.__qualname__}" + (f", field '{field}'" if field else ""),
            expected=f"every field's type a name in module {cls.__module__} (annotations are "
            "strings there under `from __future__ import annotations`)",
            found=f"NameError: {exc}",
            hint="define the config classes at module level, or give the field a default "
            "that holds the class (attrs.Factory(ModelConfig))") from None
    for field in attrs.fields(cls):
        for inner in _attrs_classes(field.type):
            _resolve(inner, seen)


def _local_names(cls: type) -> dict[str, Any]:
    """Names a class defined in a function can mean: itself and the classes its fields'
    defaults hold."""
    names: dict[str, Any] = {cls.__name__: cls}
    for field in attrs.fields(cls):
        default = field.default
        if isinstance(default, attrs.Factory) and isinstance(default.factory, type):
            names.setdefault(default.factory.__name__, default.factory)
        elif default is not attrs.NOTHING and attrs.has(type(default)):
            names.setdefault(type(default).__name__, type(default))
    return names


def _attrs_classes(annotation: Any) -> list[type]:
    """The attrs classes inside a resolved annotation (`X`, `X | None`, `list[X]`)."""
    if isinstance(annotation, type) and attrs.has(annotation):
        return [annotation]
    found = []
    for arg in typing.get_args(annotation):
        found += _attrs_classes(arg)
    return found


def _unresolved_field(cls: type, globalns: dict) -> str | None:
    """The first field whose annotation does not evaluate (to name it in the message)."""
    localns = _local_names(cls)
    for field in attrs.fields(cls):
        if isinstance(field.type, str):
            try:
                eval(field.type, globalns, localns)   # noqa: S307 - the class's own annotation
            except Exception:
                return field.name
    return None


def check_writable_as_toml(cfg: Any, where: Any) -> None:
    """Every value can go into config.toml (a run writes it; `--config` takes it back)."""
    import tomli_w  # deferred: start-up time

    def walk(value: Any, path: tuple) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(inner, (*path, str(key)))
            return
        try:
            tomli_w.dumps({"v": value})
        except (TypeError, ValueError) as exc:
            raise UserError(f"config key '{'.'.join(path)}' cannot be written to config.toml",
                            where=where(path), expected="a value TOML holds (numbers, strings, "
                            "booleans, lists, tables)", found=f"{describe_value(value)} ({exc})",
                            hint="use a list instead of a set or tuple of other types, or "
                            "store the value as a string") from None

    walk(to_dict(cfg), ())
