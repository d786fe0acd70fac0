"""The recipe's schema: frozen dataclasses, one per section, that coerce and validate every
value when built (a mistake is a one-line :class:`~diffq_cli.errors.InputError` naming the key).
``load.py`` reads YAML and overrides into these. The defaults here are the CLI's, the best
measured (the library constructors keep the reference DiffQ's); ``diffq finetune
--print-config`` shows them resolved.
No YAML and no torch here: importing the schema is cheap."""

import dataclasses
import difflib
import importlib.util
import math
import re
import types
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Union, get_args, get_origin

from diffq_cli.errors import InputError

DEFAULT_MU = (1e-3,)
BASELINES = ("none", "float", "ptq", "qat", "lsq", "all")
_BAD = object()  # sentinel: a value that cannot be coerced to the field's type
DEVICES = "auto, cpu, cuda, cuda:N or mps"
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def is_device(name: str) -> bool:
    """Whether ``name`` is a device the recipe and the CLI accept (``auto``, ``cuda:1``, ...)."""
    return _DEVICE.fullmatch(name) is not None
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
    """Dataset, image size and loader settings (see ``diffq_cli.data.loaders``)."""

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


# Each method's own keys of the ``quant`` section (besides ``method``); a key the chosen method
# does not take is an error, not silently dropped. Built-in values are the best measured on this
# project's benchmarks (docs/benchmarks.md); the library constructors keep the reference's.
SHARED_QUANT_KEYS = ("grid", "min_size", "float16", "exclude")
QUANT_KEYS = {
    "diffq": (*SHARED_QUANT_KEYS, "group_size", "min_bits", "max_bits", "init_bits",
              "extra_bits", "noise"),
    "uniform": (*SHARED_QUANT_KEYS, "bits"),
    "lsq": (*SHARED_QUANT_KEYS, "bits"),
}


@dataclass(frozen=True)
class QuantConfig(_Section):
    """The quantization method and its own settings (``QUANT_KEYS``): the recipe's ``quant``."""

    section: ClassVar = "quant"
    choices: ClassVar = {"method": tuple(QUANT_KEYS), "noise": ("gaussian", "uniform"),
                         "grid": ("minmax", "learned")}
    bounds: ClassVar = {"group_size": _GE0, "min_size": _GE0, "extra_bits": _GE0,
                        "min_bits": _BITS, "init_bits": _BITS, "max_bits": _BITS, "bits": _BITS}
    method: str = "diffq"
    grid: str = "minmax"  # minmax (each tensor's range, the paper's) | learned (clipped, per row)
    min_size: float = 0.01
    float16: bool = False
    exclude: tuple[str, ...] = ()
    group_size: int = 8
    min_bits: int | None = None  # None: the grid's floor, 1 on learned (+-alpha/2), else 2
    max_bits: int = 15
    init_bits: int = 8
    extra_bits: int = 0
    noise: str = "uniform"  # a step wide (rounding's variance): +1.3-1.4 points at 2 bits' size
    bits: float = 8

    def _validate(self) -> None:
        if self.method == "lsq" and (self.bits != int(self.bits) or self.bits < 2):
            raise InputError("recipe key 'quant.bits' must be a whole number between 2 and 15 "
                             f"for quant.method=lsq (its signed grid needs 2 bits at least), got "
                             f"{self.bits:g}")
        if self.min_bits is None:  # 1 bit is a binary quantizer on the learned grid only
            object.__setattr__(self, "min_bits", 1 + (self.grid != "learned"))
        if not self.min_bits <= self.init_bits <= self.max_bits:
            raise InputError("recipe keys must satisfy quant.min_bits <= quant.init_bits <= "
                             f"quant.max_bits, got {self.min_bits} <= {self.init_bits} <= "
                             f"{self.max_bits}; adjust one of them")

    def settings(self) -> dict[str, Any]:
        """The chosen method's own keys and values (what its quantizer is built from)."""
        out = {k: getattr(self, k) for k in QUANT_KEYS[self.method]}
        return {**out, "exclude": list(self.exclude)}


@dataclass(frozen=True)
class OptimConfig(_Section):
    """Optimizer for the weights, learning-rate schedule, bits learning rate."""

    section: ClassVar = "optim"
    choices: ClassVar = {"name": ("sgd", "adamw"), "schedule": ("cosine", "step", "constant")}
    bounds: ClassVar = {"lr": _GT0, "bits_lr": _GT0, "gamma": _GT0,
                        "grad_clip": _GT0, "momentum": (0, 1, False), "weight_decay": _GE0,
                        "step_size": _GE1, "warmup_steps": _GE0}
    name: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    bits_lr: float = 2e-2  # Adam on the widths and learned scales (the paper: 1e-3, 200 epochs)
    schedule: str = "cosine"
    step_size: int = 30
    gamma: float = 0.1
    warmup_steps: int = 0
    grad_clip: float | None = None


@dataclass(frozen=True)
class TrainConfig(_Section):
    """Loop length, the model-size penalties ``mu`` or size targets (one run each), device."""

    section: ClassVar = "train"
    choices: ClassVar = {"amp": ("none", "bf16", "fp16"), "logger": ("none", "tensorboard"),
                         "target_size": ("true", "file")}
    bounds: ClassVar = {"epochs": _GE1, "max_steps": _GE1, "log_every": _GE1, "seed": _GE0,
                        "seeds": _GE1,
                        "float_epochs": _GE0, "freeze_bits": (0, 1, False), "bn_recalibrate": _GE0}
    epochs: int = 9  # DiffQ epochs: the widths need steps to move (3 -> 9: about +1 point)
    float_epochs: int | None = None  # None: 2 without starting weights, else 0
    max_steps: int | None = None
    # Last fraction of DiffQ's steps with widths frozen, trained through true quantization:
    # +2.5 / +2.0 / +0.7 points at 2 / 3 / 4 bits' size (resnet18 / Fashion-MNIST, 3 seeds).
    freeze_bits: float = 0.25
    bn_recalibrate: int = 0  # batches re-estimating BatchNorm statistics on quantized weights
    mu: tuple[float, ...] | None = None  # None and no target: DEFAULT_MU
    target_mb: tuple[float, ...] = ()
    target_size: str = "true"  # what --target-mb and the comparisons measure: true | file
    # Rows to compare with: ptq (uniform post-training rows, with every choice but none), float
    # (the float model fine-tuned as long, no quantizer: "vs float"), qat, lsq; all = every one.
    baseline: tuple[str, ...] = ("ptq",)
    seed: int = 0
    seeds: int = 1  # every fine-tuned row N times (seeds seed..seed+N-1) from one float model
    log_every: int = 10
    logger: str = "none"
    device: str = "auto"
    amp: str = "none"
    channels_last: bool = False

    def trained_baselines(self) -> tuple[str, ...]:
        """The baselines that train, in table order: float (the reference), qat, lsq."""
        wanted = {"float", "qat", "lsq"} if "all" in self.baseline else set(self.baseline)
        return tuple(name for name in ("float", "qat", "lsq") if name in wanted)

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
        for name in self.baseline:
            if name not in BASELINES:
                raise InputError(f"recipe key 'train.baseline' must be one of "
                                 f"{', '.join(BASELINES)}; got {name!r}")
        if "none" in self.baseline and len(self.baseline) > 1:
            raise InputError("train.baseline 'none' cannot be combined with other baselines; "
                             f"got {', '.join(self.baseline)}")
        check_logger(self.logger)  # a missing package fails at load time, before any training
        if not is_device(self.device):
            raise InputError(f"recipe key 'train.device' must be {DEVICES}; got {self.device!r}")


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
        if self.train.float_epochs is None:  # a random network is trained in float first
            start = self.model.weights is not None or self.model.pretrained
            object.__setattr__(self.train, "float_epochs", 0 if start else 2)
        if self.train.target_mb and self.quant.method != "diffq":
            raise InputError("train.target_mb (--target-mb) needs quant.method=diffq (learned "
                             f"bit widths), got quant.method={self.quant.method}")


SECTIONS = {f.name: f.type for f in fields(Recipe) if dataclasses.is_dataclass(f.type)}
KEY_TYPES = {f.name: f.type for f in fields(Recipe) if f.name not in SECTIONS}
KEY_TYPES.update({f"{s}.{f.name}": f.type for s, cls in SECTIONS.items() for f in fields(cls)})
_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _scalar(value: Any, tp: type) -> Any:
    """``value`` as ``tp``, or ``_BAD``. YAML 1.1 reads ``1e-3`` as a string, hence str -> float."""
    if isinstance(value, bool) or tp is bool:  # a YAML `true` for a word (target_size): "true"
        ok = isinstance(value, bool) and tp in (bool, str)
        return _BAD if not ok else value if tp is bool else str(value).lower()
    if tp is int and isinstance(value, (int, float)) and float(value).is_integer():
        return int(value)
    if tp is float and isinstance(value, (int, float, str)):
        try:
            number = float(value)
        except ValueError:
            return _BAD
        return number if math.isfinite(number) else _BAD
    return str(value) if tp is str and isinstance(value, (str, int)) else _BAD


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
        put_key(flat, key, {} if value is None else value)
        return tp(**{k.rpartition(".")[2]: v for k, v in flat.items()})
    out = _scalar(value, tp)
    if out is _BAD:
        words = _WORDS[tp] + (" or null" if optional else "")
        raise InputError(f"recipe key '{key}' expects {words}, got {value!r}")
    return out


def _unknown(key: str) -> InputError:
    close = difflib.get_close_matches(key, [*KEY_TYPES, *SECTIONS], n=1, cutoff=0.6)
    leaf = key.rpartition(".")[2]
    close = close or [k for k in KEY_TYPES if k.rpartition(".")[2] == leaf]
    hint = f"did you mean '{close[0]}'?" if close else "`diffq recipes default` lists the keys"
    return InputError(f"unknown recipe key '{key}'; {hint}")


# Keys and values that measured no better and were removed: what to do instead, and why.
REMOVED = {
    "quant.param": "the sigmoid widths (the paper's) are the only ones recipes train; linear "
                   "widths measured no more accurate over three pairs",
    "optim.bits_travel": "it sized the rate of linear widths, which were removed; set "
                         "optim.bits_lr",
    "quant.noise_source": "the noise pool is always used (fresh noise measured within the "
                          "seeds' spread, and slower)",
    "train.start_widths": "a size target always starts from widths by loss per bit (fisher; "
                          "the small-tensors-first start measured 1.6-4 points worse)",
    "train.fill_budget": "a size target's run always lands on its target: the widths are "
                         "raised to it when they freeze",
}
REMOVED_VALUES = {
    ("quant.grid", "channel"): "use quant.grid=learned or minmax (the per-channel min/max grid "
                               "measured no better than learned for the fine-tuned methods, in "
                               "files 18-19 % larger than minmax's); files written on it still "
                               "load",
}


def put_key(flat: dict[str, Any], key: str, value: Any) -> None:
    """Set dotted ``key`` in ``flat`` after checking it exists; a section takes a mapping."""
    key = str(key).strip()
    if key in REMOVED:
        raise InputError(f"recipe key '{key}' was removed: {REMOVED[key]}; delete it")
    if isinstance(value, str) and (key, value) in REMOVED_VALUES:
        raise InputError(f"{key}={value} was removed: {REMOVED_VALUES[key, value]}")
    if key in SECTIONS:
        if not isinstance(value, Mapping):
            example = f"{key}.{fields(SECTIONS[key])[0].name}=..."
            raise InputError(f"recipe key '{key}' is a section and expects a mapping; "
                             f"set one of its keys instead, e.g. '{example}'")
        for sub, sub_value in value.items():
            put_key(flat, f"{key}.{sub}", sub_value)
    elif key in KEY_TYPES:
        flat[key] = value
    else:
        raise _unknown(key)


def check_logger(name: str) -> None:
    """Raise a one-line InputError when ``train.logger`` names a package that is not installed."""
    if name == "tensorboard" and importlib.util.find_spec("tensorboard") is None:
        raise InputError("train.logger=tensorboard needs the tensorboard package: "
                         "pip install 'diffq-cli[tensorboard]' (or set train.logger=none)")
