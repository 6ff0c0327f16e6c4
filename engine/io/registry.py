"""recipes.toml: find it, list its recipes, resolve a name to a Recipe and its config.

    [autoencoder]
    recipe = "recipes.autoencoder:recipe"     # import path of the Recipe object
    description = "..."
    [autoencoder.train]                       # the recipe's default config tables
    epochs = 20

The file is found in the current directory or its parents, or named by `--recipes FILE` or the
environment variable ENGINE_RECIPES. Import paths resolve relative to the file's folder.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from engine.core.errors import UserError, close_match, describe_value
from engine.io.layering import Layer, build_config, config_file_layer, parse_set, read_toml

FILENAME = "recipes.toml"
ENTRY_KEYS = ("recipe", "description")


@attrs.frozen
class Entry:
    """One recipe of the registry: its key, import path, description and default tables."""

    name: str
    import_path: str
    description: str
    defaults: dict
    file: Path


def find_registry(explicit: str | Path | None = None) -> Path:
    """The recipes.toml to use: `--recipes`, then ENGINE_RECIPES, then cwd and its parents."""
    named = explicit or os.environ.get("ENGINE_RECIPES")
    if named:
        path = Path(named)
        if not path.is_file():
            flag = "--recipes" if explicit else "ENGINE_RECIPES"
            raise UserError("recipes file not found", where=f"{flag} {named}",
                            expected="an existing recipes.toml",
                            found="a folder" if path.is_dir() else "no such file")
        return path
    here = Path.cwd()
    for folder in (here, *here.parents):
        if (folder / FILENAME).is_file():
            return folder / FILENAME
    raise UserError("recipes.toml not found", where=f"{here} and its parents",
                    expected="a recipes.toml in the current folder or a parent",
                    found="none", hint="run from the project folder, or pass --recipes FILE "
                    "or set ENGINE_RECIPES")


def _entry(name: str, table: Any, path: Path) -> Entry:
    """One entry of recipes.toml, checked for shape."""
    if not isinstance(table, dict):
        raise UserError(f"recipes.toml entry '{name}' is not a table", where=f"{path}",
                        expected=f"[{name}] with recipe = \"module:attribute\"",
                        found=f"{name} = {describe_value(table)}")
    if "recipe" not in table:
        raise UserError(f"recipe '{name}' has no import path", where=f"{path} [{name}]",
                        expected='recipe = "package.module:attribute"',
                        found="keys " + ", ".join(table) if table else "an empty table")
    path_value = table["recipe"]
    if not isinstance(path_value, str) or ":" not in path_value:
        raise UserError(f"recipe '{name}' has an invalid import path",
                        where=f"{path} [{name}] recipe", expected='"package.module:attribute"',
                        found=describe_value(path_value))
    description = table.get("description", "")
    if not isinstance(description, str):
        raise UserError(f"recipe '{name}' has a description that is not text",
                        where=f"{path} [{name}] description", expected='description = "..."',
                        found=describe_value(description))
    defaults = {k: v for k, v in table.items() if k not in ENTRY_KEYS}
    return Entry(name, path_value, description, defaults, path)


def read_registry(path: Path) -> dict[str, Entry]:
    """Every entry of recipes.toml, each checked for shape (the first bad one is raised)."""
    return {name: _entry(name, table, path) for name, table in
            read_toml(path, "recipes file").items()}


def find_entry(name: str, path: Path) -> Entry:
    """The entry `name`; a mistake in another entry does not stop this one from running."""
    tables = read_toml(path, "recipes file")
    if name not in tables:
        known = sorted(tables)
        raise UserError(f"unknown recipe '{name}'", where=str(path),
                        expected="one of " + (", ".join(known) or "(no recipes registered)"),
                        found=name, hint=close_match(name, known))
    return _entry(name, tables[name], path)


def import_recipe(entry: Entry) -> Any:
    """Import the Recipe object an entry names (its module resolved from the file's folder)."""
    from engine.core.recipe import Recipe  # deferred: `list` reads the registry, not torch

    module_name, _, attr = entry.import_path.partition(":")
    root = str(entry.file.resolve().parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    where = f"{entry.file} [{entry.name}] recipe = \"{entry.import_path}\""
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise UserError(f"recipe module '{module_name}' not found", where=where,
                            expected=f"an importable module under {root}",
                            found=f"no module named '{exc.name}'") from None
        raise UserError(f"recipe module '{module_name}' failed to import", where=where,
                        expected="a module that imports cleanly", found=f"{exc!r}") from exc
    except (Exception, SystemExit) as exc:   # sys.exit() at import would end us silently
        raise UserError(f"recipe module '{module_name}' failed to import", where=where,
                        expected="a module that imports cleanly",
                        found=f"{type(exc).__name__}: {exc}") from exc
    if not hasattr(module, attr):
        names = [n for n in dir(module) if not n.startswith("_")]
        raise UserError(f"'{module_name}' has no attribute '{attr}'", where=where,
                        expected="the name of a Recipe object in that module", found=
                        "names " + ", ".join(names[:12]), hint=close_match(attr, names))
    recipe = getattr(module, attr)
    if not isinstance(recipe, Recipe):
        raise UserError(f"'{entry.import_path}' is not a Recipe", where=where,
                        expected="an engine.Recipe object", found=describe_value(recipe))
    return recipe


def resolve(name: str, *, recipes: str | Path | None = None, config_file: str | Path | None = None,
            sets: Sequence[str] = (), base: dict | None = None,
            base_source: str | None = None) -> tuple[Entry, Any, Any]:
    """The entry, Recipe and config for `name`: defaults < recipes.toml < base < --config < --set.

    `base` is an earlier run's config.toml when resuming.
    """
    entry = find_entry(name, find_registry(recipes))
    recipe = import_recipe(entry)
    layers, _ = layers_for(entry, config_file, sets, base, base_source)
    return entry, recipe, build_config(recipe.config, layers)


def layers_for(entry: Entry, config_file: str | Path | None = None, sets: Sequence[str] = (),
               base: dict | None = None, base_source: str | None = None
               ) -> tuple[list[Layer], list[str]]:
    """The config layers of DESIGN.md 4, lowest first (recipes.toml < base < --config <
    --set), and where each came from, for `check`'s line."""
    layers = [Layer(entry.defaults, str(entry.file), entry.name)]
    sources = [f"{entry.file.name} [{entry.name}]"]
    if base is not None:
        layers.append(Layer(base, base_source or "config.toml"))
        sources.append(base_source or "config.toml")
    if config_file is not None:
        layers.append(config_file_layer(config_file))
        sources.append(f"--config {config_file}")
    layers += [parse_set(flag) for flag in sets]
    sources += [f"--set {flag}" for flag in sets]
    return layers, sources
