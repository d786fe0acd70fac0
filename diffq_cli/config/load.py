"""Recipes: YAML files (data only) plus overrides -> the frozen, validated dataclasses of
``config.py``.

A recipe is resolved in three layers, later wins: the YAML file (a shipped name such as
``default`` or a path), then typed CLI flags (``{"train.epochs": 2}``), then ``key=value``
overrides (``optim.lr=0.1``, ``train.mu=[1e-3,1e-2]``). Every key and value is checked, and a
mistake raises a one-line :class:`~diffq_cli.errors.InputError` naming the key and the fix.

This is the only module that imports YAML; it does so inside functions so that importing it
stays cheap at CLI start-up.
"""

import dataclasses
import difflib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from diffq_cli.config.schema import KEY_TYPES, QUANT_KEYS, Recipe, put_key
from diffq_cli.errors import InputError

# The shipped recipes live in the repository's top-level ``recipes/``; an installed wheel carries
# them as ``diffq_cli/recipes/`` (pyproject maps that package onto ``recipes/``). No symlink.
_PACKAGED = Path(__file__).parents[1] / "recipes"  # the wheel's data package diffq_cli.recipes
RECIPES_DIR = _PACKAGED if _PACKAGED.is_dir() else Path(__file__).parents[2] / "recipes"
DEFAULT_RECIPE = "default"


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``"key=value"`` and parse the value as YAML (``train.mu=[1e-3,1e-2]``).

    Values that are not valid YAML (``quant.exclude=*.bias``) are kept as text; a string key
    keeps the raw text so that ``model.name=yes`` is not read as a boolean.
    """
    import yaml

    key, sep, raw = text.partition("=")
    key, raw = key.strip(), raw.strip()
    if not sep or not key:
        raise InputError(f"override {text!r} must have the form key=value, e.g. optim.lr=0.1")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        is_list = raw.startswith("[") and raw.endswith("]")
        value = [v.strip() for v in raw[1:-1].split(",") if v.strip()] if is_list else raw
    if KEY_TYPES.get(key) in (str, str | None) and value is not None and not isinstance(value, str):
        value = raw
    return key, value


def _read_yaml(path: Path) -> dict:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        reason = getattr(err, "strerror", None) or str(err)
        raise InputError(f"cannot read recipe file '{path}': {reason}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or "invalid YAML"
        raise InputError(f"recipe file '{path}' is not valid YAML: {problem}{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"recipe file '{path}' must be a mapping such as 'train: {{epochs: 3}}', "
                         f"got {type(data).__name__}")
    return data


def _shipped() -> list[str]:
    names = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))
    return sorted(names, key=lambda n: n != DEFAULT_RECIPE)  # default first, then by name


def _shipped_path(name: str) -> Path:
    names = _shipped()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise InputError(f"unknown recipe '{name}'; {hint}available: {', '.join(names)} "
                         "(or pass a path to a .yaml file)")
    return RECIPES_DIR / f"{name}.yaml"


def _locate(name_or_path: str) -> Path:
    path = Path(name_or_path).expanduser()
    looks_like_path = path.suffix in (".yaml", ".yml") or len(path.parts) > 1
    if not looks_like_path and (name_or_path in _shipped() or not path.is_file()):
        return _shipped_path(name_or_path)  # a shipped name wins over a same-named local file
    if not path.is_file():
        raise InputError(f"recipe file '{name_or_path}' not found; pass an existing .yaml file "
                         "or a shipped recipe name (`diffq recipes` lists them)")
    return path


def list_recipes() -> list[tuple[str, str]]:
    """Shipped recipes as ``(name, first line of description)``, ``default`` first."""
    out = []
    for name in _shipped():
        description = str(_read_yaml(RECIPES_DIR / f"{name}.yaml").get("description") or "")
        out.append((name, (description.strip().splitlines() or [""])[0]))
    return out


def recipe_text(name: str) -> str:
    """Raw YAML text of the shipped recipe ``name`` (comments included)."""
    return _shipped_path(name).read_text(encoding="utf-8")


def copy_recipe(name: str, dest: str | os.PathLike, force: bool = False) -> Path:
    """Write the shipped recipe ``name`` (comments included) to ``dest`` for editing.

    The write is atomic; an existing ``dest`` is kept unless ``force``.

    Raises:
        InputError: unknown recipe, ``dest`` exists (without ``force``) or is a directory.

    Example:
        >>> copy_recipe("default", "my.yaml")  # then: diffq finetune --recipe my.yaml
    """
    from diffq_cli.fileio import atomic_write

    text, path = recipe_text(name), Path(dest).expanduser()
    if path.is_dir():
        raise InputError(f"{path} is a directory; pass a file name such as {path / name}.yaml")
    if path.exists() and not force:
        raise InputError(f"{path} already exists; pass --force to replace it")
    try:
        atomic_write(path, text.encode("utf-8"))
    except OSError as err:
        raise InputError(f"cannot write {path}: {err.strerror or err}") from None
    return path


def default_values() -> dict[str, Any]:
    """The default recipe's resolved values by dotted key (``{"train.epochs": 9, ...}``), for
    help texts."""
    flat: dict[str, Any] = {}
    for section, values in recipe_to_dict(load_recipe(DEFAULT_RECIPE)).items():
        if isinstance(values, dict):
            flat.update({f"{section}.{k}": v for k, v in values.items()})
        else:
            flat[section] = values
    return flat


def load_recipe(name_or_path: str | os.PathLike | None = None, overrides: Sequence[str] = (),
                flags: Mapping[str, object] | None = None) -> Recipe:
    """Resolve a recipe: the YAML, then ``flags``, then ``overrides`` (later wins).

    Args:
        name_or_path: a shipped recipe name (default ``"default"``) or a path to a .yaml file.
        overrides: ``"key=value"`` strings with dotted keys, values parsed as YAML.
        flags: already-typed values by dotted key, only for flags the user gave (``None``
            values are skipped as "not given").

    Returns:
        The frozen, validated :class:`Recipe`.

    Raises:
        InputError: unknown recipe or key, missing file, bad YAML, bad value or range.

    Example:
        >>> load_recipe("default", ["optim.lr=0.1"], {"train.epochs": 1}).optim.lr
        0.1
    """
    return resolve_recipe(name_or_path, overrides, flags)[0]


def resolve_recipe(name_or_path: str | os.PathLike | None = None, overrides: Sequence[str] = (),
                   flags: Mapping[str, object] | None = None) -> tuple[Recipe, list[str]]:
    """:func:`load_recipe`, plus the notes on what was decided for the user.

    One decision: starting weights given by a flag or an override (``--weights``,
    ``--pretrained``) make the float pre-training stage default to 0 epochs, unless
    ``train.float_epochs`` is given the same way; a recipe file that sets both keeps its own.
    """
    path = _locate(str(name_or_path or DEFAULT_RECIPE))
    flat: dict[str, Any] = {}
    for key, value in _read_yaml(path).items():
        put_key(flat, key, value)
    flat.setdefault("name", path.stem)
    given: dict[str, Any] = {}  # flags then overrides: the command line
    for key, value in (flags or {}).items():
        if value is not None:
            put_key(given, key, value)
    for text in overrides:
        put_key(given, *parse_override(text))
    # mu and target_mb are exclusive: the command line's choice replaces the file's other one.
    for key, other, unset in (("train.mu", "train.target_mb", []),
                              ("train.target_mb", "train.mu", None)):
        if given.get(key) not in (None, [], ()) and other not in given:
            flat[other] = unset
    flat.update(given)
    notes = []
    start = given.get("model.weights") or given.get("model.pretrained") is True
    if start and "train.float_epochs" not in given and flat.get("train.float_epochs"):
        notes.append(f"float pre-training skipped (recipe has train.float_epochs="
                     f"{flat['train.float_epochs']}): the run starts from given weights; "
                     "pass --float-epochs N to train in float first anyway")
        flat["train.float_epochs"] = 0
    check_method_keys(flat)
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        section, _, leaf = key.rpartition(".")
        (nested.setdefault(section, {}) if section else nested)[leaf] = value
    return Recipe(**nested), notes


def check_method_keys(flat: Mapping[str, Any]) -> None:
    """A ``quant`` key that the chosen method does not take is an InputError naming both (an
    unknown method is left to the schema's own check)."""
    method = flat.get("quant.method", "diffq")
    keys = QUANT_KEYS.get(method)
    for key in flat:
        section, _, leaf = key.rpartition(".")
        if keys is not None and section == "quant" and leaf != "method" and leaf not in keys:
            raise InputError(f"recipe key '{key}' is not a setting of quant.method={method} "
                             f"(its keys: {', '.join(keys)}); remove it")


def dump_recipe(recipe: Recipe) -> str:
    """YAML text of a resolved recipe; ``load_recipe`` on it gives back an equal Recipe."""
    import yaml

    class Dumper(yaml.SafeDumper):
        """Block mappings, flow lists (``mu: [0.001, 0.01]``)."""

    Dumper.add_representer(list, lambda dumper, value: dumper.represent_sequence(
        "tag:yaml.org,2002:seq", value, flow_style=True))
    text = "# Resolved diffq recipe; rerun with: diffq finetune --recipe <this file>\n"
    for key, value in recipe_to_dict(recipe).items():
        chunk = yaml.dump({key: value}, Dumper=Dumper, sort_keys=False, allow_unicode=True,
                          width=100)
        text += chunk if key in ("name", "description") else f"\n{chunk}"
    return text


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    """The recipe as plain Python types (tuples become lists), in schema order; the ``quant``
    section holds the chosen method's keys only (so the dump loads back)."""

    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return [plain(v) for v in value] if isinstance(value, (list, tuple)) else value

    out = plain(dataclasses.asdict(recipe))
    out["quant"] = plain({"method": recipe.quant.method, **recipe.quant.settings()})
    return out
