"""`engine new NAME --kind KIND`: write a recipe that trains at once, from a template.

Each kind is a folder of `engine/templates/` holding `__init__.py`, `config.py`, `data.py` and
`model.py` templates plus the recipes.toml section, rendered with `string.Template`
(`$name`, `$Class`, `$kind`). The recipe folder is written into a temporary folder beside it
and renamed into place; recipes.toml is appended to last (in place, and cut back if the write
fails), so a failure leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import keyword
import os
import shutil
import string
import sys
import tempfile
from pathlib import Path

from engine.core.errors import UserError, close_match, raise_all
from engine.io.layering import tomllib
from engine.io.registry import read_registry

TEMPLATES = Path(__file__).parent / "templates"
KINDS = ("autoencoder", "ranking", "transformer", "cnn")
MODULES = ("__init__.py", "config.py", "data.py", "model.py")
SECTION = "recipes.toml"


def class_prefix(name: str) -> str:
    """`my_net` -> `MyNet`: the prefix of the generated config class."""
    return "".join(part[:1].upper() + part[1:] for part in name.split("_"))


def render(name: str, kind: str) -> tuple[dict[str, str], str]:
    """The recipe's modules {file name: text} and its recipes.toml section."""
    values = {"name": name, "Class": class_prefix(name), "kind": kind}
    folder = TEMPLATES / kind

    def fill(file: str) -> str:
        text = (folder / f"{file}.tmpl").read_text(encoding="utf-8")
        return string.Template(text).substitute(values)

    return {module: fill(module) for module in MODULES}, fill(SECTION)


def check_new(name: str, kind: str, registry: Path) -> None:
    """Refuse an unknown kind, a name that is no Python identifier, or one already in use
    (every such mistake at once)."""

    errors = []
    if kind not in KINDS:
        errors.append(UserError(f"unknown kind '{kind}'", where="--kind", expected="one of " +
                                ", ".join(KINDS), found=kind, hint=close_match(kind, KINDS)))
    # ASCII only: the name is also a bare TOML key; dunder names clash with recipes/__init__.py
    if (not (name.isidentifier() and name.isascii()) or keyword.iskeyword(name)
            or name.startswith("__")):
        errors.append(UserError(
            f"'{name}' cannot name a recipe", where="NAME", expected="a Python identifier "
            "(ASCII letters, digits and _, not starting with a digit or __, not a keyword)",
            found=repr(name), hint="e.g. " + (_as_identifier(name) or "my_recipe")))
        raise_all(errors)
    _check_places(registry)
    entries = read_registry(registry) if registry.exists() else {}
    if name in entries:
        errors.append(UserError(
            f"recipe '{name}' already exists", where=f"{registry} [{name}]",
            expected="a new name", found=f"recipe = \"{entries[name].import_path}\"",
            hint="pick another name, or edit the existing recipe"))
    folder = registry.parent / "recipes"
    for existing in (folder / name, folder / f"{name}.py"):
        if existing.exists() and name not in entries:
            errors.append(UserError(
                f"'{name}' is already taken in the recipes folder", where=str(existing),
                expected="a name with no file or folder yet",
                found="an existing " + ("folder" if existing.is_dir() else "file"),
                hint="pick another name; engine new never overwrites a file"))
    raise_all(errors)


def _check_places(registry: Path) -> None:
    """The registry's folder must exist (`new` makes recipes.toml, never folders above it), and
    `recipes` in it must be a folder or nothing."""
    folder = registry.parent
    if not folder.is_dir():
        raise UserError("the folder of recipes.toml does not exist", where=str(registry),
                        expected="an existing folder to write recipes.toml and recipes/ in",
                        found=f"no folder {folder}",
                        hint="make the folder first, or point --recipes at another file")
    recipes = folder / "recipes"
    if recipes.exists() and not recipes.is_dir():
        raise UserError("'recipes' beside recipes.toml is not a folder", where=str(recipes),
                        expected="a folder (the recipes package) or nothing",
                        found="a file", hint="rename that file; engine new never overwrites one")


def _as_identifier(name: str) -> str:
    word = "".join(c if c.isascii() and (c.isalnum() or c == "_") else "_" for c in name)
    word = word.strip("_").lower()
    if word and (word[0].isdigit() or keyword.iskeyword(word)):
        word = "recipe_" + word
    return word


def _appended(old: bytes, section: str) -> bytes:
    """recipes.toml with `section` appended after one blank line; the old bytes kept as they are."""
    if not old.strip():
        sep = b""
    elif old.endswith(b"\n\n") or old.endswith(b"\r\n\r\n"):
        sep = b""
    elif old.endswith(b"\n"):
        sep = b"\n"
    else:
        sep = b"\n\n"
    return old + sep + section.encode("utf-8")


def _append(registry: Path, old: bytes, addition: bytes) -> None:
    """Append to the registry in place (its inode, mode and links kept; the old bytes never
    rewritten); on a failure half-way, cut it back to the old bytes."""
    with open(registry, "ab") as f:
        if f.tell() != len(old):
            raise UserError("recipes.toml changed while `engine new` ran", where=str(registry),
                            expected=f"{len(old)} bytes, as read", found=f"{f.tell()} bytes",
                            hint="run the command again")
        try:
            f.write(addition)
            f.flush()
            os.fsync(f.fileno())
        except BaseException:
            f.truncate(len(old))
            raise


def write_recipe(name: str, kind: str, registry: Path) -> Path:
    """Write recipes/NAME/ and append [NAME] to `registry` (made if missing); all or nothing.
    Returns the new folder."""
    modules, section = render(name, kind)
    return write_rendered(name, modules, section, registry, f"template {kind}/{SECTION}.tmpl")


def write_rendered(name: str, modules: dict[str, str], section: str, registry: Path,
                   source: str) -> Path:
    """Write the rendered `modules` as recipes/NAME/ and append `section` to `registry`; all
    or nothing (`source` names what rendered them, for a section that makes no entry)."""
    made_registry = not registry.exists()  # a first recipe makes the file
    old = b"" if made_registry else registry.read_bytes()
    new = _appended(old, section)
    # a broken template must never reach the user's registry
    if tomllib.loads(new.decode("utf-8")).get(name, {}).get("recipe") != f"recipes.{name}:recipe":
        raise RuntimeError(f"{source} does not make a [{name}] entry")

    parent = registry.parent / "recipes"
    target = parent / name
    made_parent = not parent.exists()
    tmp: Path | None = None
    renamed = False
    try:
        if made_parent:
            parent.mkdir()
            # a regular package: a namespace folder would lose to an installed `recipes` package
            (parent / "__init__.py").write_text('"""Recipes registered in recipes.toml."""\n',
                                                encoding="utf-8")
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=parent))
        for module, text in modules.items():
            (tmp / module).write_text(text, encoding="utf-8")
        if target.exists():  # made since check_new: never replace it
            raise UserError(f"'{name}' appeared in the recipes folder meanwhile",
                            where=str(target), expected="no such folder", found="one")
        tmp.rename(target)
        renamed = True
        # last: the registry names the recipe only once its folder is whole
        _append(registry, old, new[len(old):])
    except BaseException as exc:
        if made_registry:
            registry.unlink(missing_ok=True)
        if renamed:
            shutil.rmtree(target, ignore_errors=True)
        elif tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if made_parent:
            (parent / "__init__.py").unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                parent.rmdir()  # only if nothing else appeared in it meanwhile
        if isinstance(exc, OSError):
            raise _write_error(exc, registry) from exc
        raise
    return target


def _write_error(exc: OSError, registry: Path) -> UserError:
    """A file that could not be written (read-only, disk full): said once, everything undone."""
    return UserError("engine new could not write the recipe; nothing was changed",
                     where=str(exc.filename or registry), expected="a writable folder and "
                     "recipes.toml, with room on the disk",
                     found=f"{type(exc).__name__}: {exc.strerror or exc}",
                     hint="fix the permissions or free space, then run the command again")


def cli(name: str, kind: str, registry: Path) -> int:
    """`python -m engine new NAME --kind KIND` with the recipes.toml at `registry`."""
    registry = Path(registry)
    check_new(name, kind, registry)
    target = write_recipe(name, kind, registry)
    where = _shown(target)
    print(f"created {where}/ ({', '.join(MODULES)}) and [{name}] in {_shown(registry)}")
    print("next:")
    print(f"  python -m engine check {name}      # checks the recipe before training")
    print(f"  python -m engine run {name}        # trains it")
    print(f"  run files go to artifacts/models/{name}/runs/<run_id>/")
    sys.stdout.flush()
    return 0


def _shown(path: Path) -> str:
    """`path` relative to the current folder when it is inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
