"""Recipes: YAML files (data only) plus overrides -> frozen, validated dataclasses.

A recipe is resolved in three layers, later wins: the YAML file (a shipped name such as
``default`` or a path), then typed CLI flags (``{"train.epochs": 2}``), then ``key=value``
overrides (``optim.lr=0.1``, ``train.mu=[1e-3,1e-2]``). Every key and value is checked, and a
mistake raises a one-line :class:`~diffq_cli.errors.InputError` naming the key and the fix.

This is the only module that imports YAML; it does so inside functions so that importing it
stays cheap at CLI start-up.
"""

import dataclasses
import difflib
import math
import os
import re
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Union, get_args, get_origin

from diffq_cli.errors import InputError

# The shipped recipes live in the repository's top-level ``recipes/``; an installed wheel carries
# them as ``diffq_cli/recipes/`` (pyproject maps that package onto ``recipes/``). No symlink.
_PACKAGED = Path(__file__).parent / "recipes"
RECIPES_DIR = _PACKAGED if _PACKAGED.is_dir() else Path(__file__).parent.parent / "recipes"
DEFAULT_RECIPE = "default"
DEFAULT_MU = (1e-3,)
_BAD = object()  # sentinel: a value that cannot be coerced to the field's type
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
# Bounds as (low, high, low excluded).
_GE0, _GE1, _GT0 = (0, math.inf, False), (1, math.inf, False), (0, math.inf, True)
_BITS = (1, 15, False)


class _Section:
    """Mixin: coerce each field to its annotated type, then check choices and bounds."""

    section: ClassVar[str] = ""
    choices: ClassVar[dict[str, tuple[str, ...]]] = {}
    bounds: ClassVar[dict[str, tuple[float, float, bool]]] = {}

    def __post_init__(self) -> None:
        for f in fields(self):
            value = _coerce(self._key(f.name), getattr(self, f.name), f.type)
            object.__setattr__(self, f.name, value)  # frozen: coerced values are set once here
        for name, allowed in self.choices.items():
            if getattr(self, name) not in allowed:
                raise InputError(f"recipe key '{self._key(name)}' must be one of "
                                 f"{', '.join(allowed)}; got {getattr(self, name)!r}")
        for name, (low, high, strict) in self.bounds.items():
            value = getattr(self, name)
            if value is not None and (value < low or value > high or strict and value == low):
                bound = f"between {low} and {high}" if high < math.inf else (
                    f"> {low}" if strict else f">= {low}")
                raise InputError(f"recipe key '{self._key(name)}' must be {bound}, got {value!r}")
        self._validate()

    def _key(self, name: str) -> str:
        return f"{self.section}.{name}" if self.section else name

    def _validate(self) -> None:
        """Checks across fields (overridden)."""


@dataclass(frozen=True)
class ModelConfig(_Section):
    """Which network to build and where its starting weights come from."""

    section: ClassVar = "model"
    choices: ClassVar = {"source": ("auto", "timm", "torchvision")}
    name: str = "resnet18"
    source: str = "auto"
    pretrained: bool = False
    weights: str | None = None


@dataclass(frozen=True)
class DataConfig(_Section):
    """Dataset, image size and loader settings (see ``diffq_cli.data``)."""

    section: ClassVar = "data"
    bounds: ClassVar = {"input_size": _GE1, "batch_size": _GE1, "eval_batch_size": _GE1,
                        "num_workers": _GE0, "train_subset": _GE1, "val_subset": _GE1}
    dataset: str = "digits"
    data_dir: str | None = None
    download: bool = False
    input_size: int = 32
    batch_size: int = 64
    eval_batch_size: int = 256
    num_workers: int = 0
    train_subset: int | None = None
    val_subset: int | None = None
    augment: bool = False


@dataclass(frozen=True)
class QuantConfig(_Section):
    """Quantizer choice and its constructor arguments."""

    section: ClassVar = "quant"
    choices: ClassVar = {"method": ("diffq", "uniform", "lsq"), "param": ("bits", "noise"),
                         "noise": ("gaussian", "uniform"), "noise_source": ("pool", "fresh")}
    bounds: ClassVar = {"group_size": _GE0, "min_size": _GE0, "extra_bits": _GE0,
                        "min_bits": _BITS, "init_bits": _BITS, "max_bits": _BITS, "bits": _BITS}
    method: str = "diffq"
    group_size: int = 8
    min_size: float = 0.01
    min_bits: int = 2
    max_bits: int = 15
    init_bits: int = 8
    extra_bits: int = 0
    bits: float = 8
    param: str = "bits"
    noise: str = "gaussian"
    noise_source: str = "pool"
    float16: bool = False
    exclude: tuple[str, ...] = ()

    def _validate(self) -> None:
        # Each method's own constraints, checked here so that a bad value fails at load time,
        # before any model or data is built.
        if self.method == "lsq" and (self.bits != int(self.bits) or self.bits < 2):
            raise InputError(
                "recipe key 'quant.bits' must be a whole number between 2 and 15 for "
                f"quant.method=lsq (its signed grid needs 2 bits at least), got {self.bits:g}")
        if not self.min_bits <= self.init_bits <= self.max_bits:
            raise InputError(
                "recipe keys must satisfy quant.min_bits <= quant.init_bits <= quant.max_bits, "
                f"got {self.min_bits} <= {self.init_bits} <= {self.max_bits}; adjust one of them")


@dataclass(frozen=True)
class OptimConfig(_Section):
    """Optimizer for the weights, learning-rate schedule, bits learning rate."""

    section: ClassVar = "optim"
    choices: ClassVar = {"name": ("sgd", "adamw"), "schedule": ("cosine", "step", "constant")}
    bounds: ClassVar = {"lr": _GT0, "bits_lr": _GT0, "gamma": _GT0, "grad_clip": _GT0,
                        "momentum": (0, 1, False), "weight_decay": _GE0, "step_size": _GE1,
                        "warmup_steps": _GE0}
    name: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    bits_lr: float = 1e-3
    schedule: str = "cosine"
    step_size: int = 30
    gamma: float = 0.1
    warmup_steps: int = 0
    grad_clip: float | None = None


@dataclass(frozen=True)
class TrainConfig(_Section):
    """Loop length, the model-size penalties ``mu`` or size targets (one run each), device."""

    section: ClassVar = "train"
    choices: ClassVar = {"amp": ("none", "bf16", "fp16"), "baseline": ("none", "ptq", "qat"),
                         "logger": ("none", "tensorboard")}
    bounds: ClassVar = {"epochs": _GE1, "max_steps": _GE1, "log_every": _GE1, "seed": _GE0,
                        "float_epochs": _GE0}
    epochs: int = 3
    float_epochs: int = 0
    max_steps: int | None = None
    mu: tuple[float, ...] | None = None  # None and no target: DEFAULT_MU
    target_mb: tuple[float, ...] = ()
    baseline: str = "ptq"
    seed: int = 0
    log_every: int = 10
    logger: str = "none"
    device: str = "auto"
    amp: str = "none"
    channels_last: bool = False

    def _validate(self) -> None:
        if self.mu and self.target_mb:
            raise InputError("train.mu (--mu) and train.target_mb (--target-mb) are exclusive: "
                             "give penalties or size targets, not both")
        if self.mu is None and not self.target_mb:
            object.__setattr__(self, "mu", DEFAULT_MU)
        if self.mu == () and not self.target_mb:
            raise InputError("recipe key 'train.mu' needs at least one value, e.g. train.mu=1e-3 "
                             "(or give train.target_mb)")
        for target in self.target_mb:
            if target <= 0:
                raise InputError(f"target size must be > 0 MiB, got {target:g} "
                                 "(recipe key 'train.target_mb')")
        for mu in self.mu or ():
            if mu < 0:
                raise InputError(f"mu must be >= 0, got {mu:g} (recipe key 'train.mu')")
        from diffq_cli.runlog import check_logger

        check_logger(self.logger)  # a missing package fails at load time, before any training
        if not _DEVICE.fullmatch(self.device):
            raise InputError("recipe key 'train.device' must be auto, cpu, cuda, cuda:N or mps; "
                             f"got {self.device!r}")


@dataclass(frozen=True)
class Recipe(_Section):
    """A resolved recipe; ``recipes/default.yaml`` documents every key."""

    name: str = "custom"
    description: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output: str | None = None

    def _validate(self) -> None:
        object.__setattr__(self, "description", self.description.strip())
        if self.train.target_mb and self.quant.method != "diffq":
            raise InputError("train.target_mb (--target-mb) needs quant.method=diffq (learned "
                             f"bit widths), got quant.method={self.quant.method}")


_SECTIONS = {f.name: f.type for f in fields(Recipe) if dataclasses.is_dataclass(f.type)}
_TYPES = {f.name: f.type for f in fields(Recipe) if f.name not in _SECTIONS}
_TYPES.update({f"{s}.{f.name}": f.type for s, cls in _SECTIONS.items() for f in fields(cls)})
_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _scalar(value: Any, tp: type) -> Any:
    """``value`` as ``tp``, or ``_BAD``. YAML 1.1 reads ``1e-3`` as a string, hence str -> float."""
    if isinstance(value, bool) or tp is bool:
        return value if isinstance(value, bool) and tp is bool else _BAD
    if tp is int and isinstance(value, (int, float)) and float(value).is_integer():
        return int(value)
    if tp is float and isinstance(value, (int, float, str)):
        try:
            number = float(value)
        except ValueError:
            return _BAD
        return number if math.isfinite(number) else _BAD
    if tp is str and isinstance(value, (str, int)):
        return str(value)
    return _BAD


def _coerce(key: str, value: Any, tp: Any, optional: bool = False) -> Any:
    """Check ``value`` against the annotation ``tp`` (Optional, tuple, section or scalar)."""
    if get_origin(tp) in (Union, types.UnionType):
        inner = next(a for a in get_args(tp) if a is not type(None))
        return None if value is None else _coerce(key, value, inner, optional=True)
    if get_origin(tp) is tuple:
        item = get_args(tp)[0]
        items = value if isinstance(value, (list, tuple)) else [value]
        out = tuple(_scalar(v, item) for v in items)
        if value is None or _BAD in out:
            words = {float: "numbers", str: "strings"}[item]
            raise InputError(f"recipe key '{key}' expects a list of {words}, got {value!r}")
        return out
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        flat: dict[str, Any] = {}
        _put(flat, key, {} if value is None else value)
        return tp(**{k.rpartition(".")[2]: v for k, v in flat.items()})
    out = _scalar(value, tp)
    if out is _BAD:
        words = _WORDS[tp] + (" or null" if optional else "")
        raise InputError(f"recipe key '{key}' expects {words}, got {value!r}")
    return out


def _unknown(key: str) -> InputError:
    close = difflib.get_close_matches(key, [*_TYPES, *_SECTIONS], n=1, cutoff=0.6)
    leaf = key.rpartition(".")[2]
    close = close or [k for k in _TYPES if k.rpartition(".")[2] == leaf]
    hint = f"did you mean '{close[0]}'?" if close else "`diffq recipes default` lists the keys"
    return InputError(f"unknown recipe key '{key}'; {hint}")


def _put(flat: dict[str, Any], key: str, value: Any) -> None:
    """Set dotted ``key`` in ``flat`` after checking it exists; a section takes a mapping."""
    key = str(key).strip()
    if key in _SECTIONS:
        if not isinstance(value, Mapping):
            example = f"{key}.{fields(_SECTIONS[key])[0].name}=..."
            raise InputError(f"recipe key '{key}' is a section and expects a mapping; "
                             f"set one of its keys instead, e.g. '{example}'")
        for sub, sub_value in value.items():
            _put(flat, f"{key}.{sub}", sub_value)
    elif key in _TYPES:
        flat[key] = value
    else:
        raise _unknown(key)


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
    if _TYPES.get(key) in (str, str | None) and value is not None and not isinstance(value, str):
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
    """The default recipe's values by dotted key (``{"train.epochs": 3, ...}``), for help texts."""
    flat: dict[str, Any] = {}
    for key, value in _read_yaml(RECIPES_DIR / f"{DEFAULT_RECIPE}.yaml").items():
        _put(flat, key, value)
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
        _put(flat, key, value)
    flat.setdefault("name", path.stem)
    given: dict[str, Any] = {}  # flags then overrides: the command line
    for key, value in (flags or {}).items():
        if value is not None:
            _put(given, key, value)
    for text in overrides:
        _put(given, *parse_override(text))
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
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        section, _, leaf = key.rpartition(".")
        (nested.setdefault(section, {}) if section else nested)[leaf] = value
    return Recipe(**nested), notes


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    """The recipe as plain Python types (tuples become lists), in schema order."""

    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return [plain(v) for v in value] if isinstance(value, (list, tuple)) else value

    return plain(dataclasses.asdict(recipe))


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


def output_dir(recipe: Recipe) -> str:
    """``recipe.output``, or ``runs/<model>-<dataset>-mu<mu>`` (several mu joined by '_'), or
    ``runs/<model>-<dataset>-target<X>MB`` with size targets."""
    if recipe.output:
        return recipe.output
    t = recipe.train
    runs = f"target{'_'.join(f'{x:g}' for x in t.target_mb)}MB" if t.target_mb else (
        "mu" + "_".join(f"{mu:g}" for mu in t.mu))
    slug = f"{recipe.model.name}-{recipe.data.dataset}-{runs}"
    return f"runs/{re.sub(r'[^A-Za-z0-9._+-]+', '-', slug)}"
