"""Aiming a size: ``--target-mb X`` turns mu into a Lagrange multiplier for ``size <= X``.

The problem is ``min task_loss  s.t.  true_size <= X``. Its Lagrangian is the DiffQ loss
``task + mu * (model_size() - X)``, so the weights and bits do the usual descent step and mu does
dual ascent: it grows while the differentiable size is above the aim and shrinks below it.

Design (why it looks like this):

- **Log space.** The mu that balances the task gradient spans decades (1e-3 to 10 in MB units,
  depending on model, data and bits). A multiplicative update ``log mu += gain * error`` moves
  through decades in a few dozen steps and can never turn negative.
- **Relative error, PI form.** ``error = (size - aim) / aim`` makes one gain fit any model size.
  The integral term is the dual ascent proper; the proportional term damps the lag that the
  bits' Adam momentum adds (the size reacts ~10 steps after mu changes).
- **Anti-windup.** While mu is pinned at a bound the integral does not accumulate, so mu comes
  back as soon as the sign of the error flips.
- **Steer the true size.** ``model_size()`` uses real-valued bits and charges every group the
  width of its widest possible range (``bits_bits``); the artifact rounds and charges only the
  spread actually used, ~5 % less at 3-4 bits. Every ``CALIBRATE_EVERY`` steps the loop
  measures both and the controller steers ``model_size() - offset``, the estimate of the true
  size, not the raw penalty.
- **Aim a little below X** (``AIM`` = 0.97): rounding moves the true size a little between
  calibrations; the margin keeps the final rounding fix (``quant.budget.fit_budget``) to a
  handful of groups.
- **Start at the budget.** Adam moves each logit by at most about ``bits_lr`` per step, so a
  short fine-tune cannot travel from 8 bits down to 3; the run therefore starts at integer
  widths ``k``/``k+1`` whose true size is at the aim (``quant.budget.start_at_size``: smallest
  tensors wide first, never above ``init_bits``) and spends its steps redistributing bits
  between groups, which is what DiffQ learns. A uniform real-valued start (e.g. 2.4 bits
  everywhere) was tried first: it rounds to 2 bits everywhere, trains with less noise than it is
  evaluated with, and collapsed resnet18 on Fashion-MNIST at a 3 MB target.
"""

import math

AIM = 0.97  # fraction of the target the differentiable size is steered to
MU_START = 1.0  # MB units: the scale at which the default recipe's bits start to move
MU_MIN, MU_MAX = 1e-5, 1e4
KP, KI = 4.0, 0.5  # proportional and integral gains on the relative size error (log mu units)
CALIBRATE_EVERY = 10  # steps between measurements of the true size
# A file target: the coded tables aim at FILE_AIM of it, then the real file is measured and the
# aim corrected until the file is in [FILE_FLOOR, 1] of the target. The margin is for the
# frozen phase: training through true quantization moved resnet18's file by 0.3-2 % (digits);
# a file still over the target after it is lowered just under it (``fit_target``).
FILE_AIM = 0.98
FILE_FLOOR = 0.96
FILE_ROUNDS = 4


class MuController:
    """mu adapted each step from the gap between the differentiable size and the aim.

    Args:
        target_mb: the budget X (true size in MB).
        mu: starting multiplier.
        aim: fraction of X to steer ``model_size()`` to.

    Example:
        >>> ctl = MuController(4.0)
        >>> mu = ctl.update(5.2)   # size above the aim: mu grows
    """

    def __init__(self, target_mb: float, mu: float = MU_START, aim: float = AIM):
        self.target_mb, self.aim_mb = float(target_mb), float(target_mb) * aim
        self.integral = math.log(mu) / KI  # so that the first mu is ``mu``
        self.mu = float(mu)
        self.offset = 0.0  # model_size() - true size, at the last calibration

    def calibrate(self, size_mb: float, true_mb: float) -> None:
        """Records how far the differentiable size is from the true (rounded) size."""
        self.offset = size_mb - true_mb

    def update(self, size_mb: float) -> float:
        """One dual-ascent step from the current differentiable size; returns the new mu."""
        error = (size_mb - self.offset - self.aim_mb) / self.aim_mb
        error = max(-1.0, min(1.0, error))  # a far-off start must not jump mu by decades
        integral = self.integral + error
        log_mu = KP * error + KI * integral
        if math.log(MU_MIN) < log_mu < math.log(MU_MAX):
            self.integral = integral  # anti-windup: integrate only while mu is not pinned
        log_mu = min(max(log_mu, math.log(MU_MIN)), math.log(MU_MAX))
        self.mu = math.exp(log_mu)
        return self.mu

    def state_dict(self) -> dict:
        return {"target_mb": self.target_mb, "aim_mb": self.aim_mb, "integral": self.integral,
                "mu": self.mu, "offset": self.offset}

    def load_state_dict(self, state: dict) -> None:
        self.target_mb, self.aim_mb = state["target_mb"], state["aim_mb"]
        self.integral, self.mu, self.offset = state["integral"], state["mu"], state["offset"]


class FixedMu:
    """The plain ``--mu`` case, with the same interface as :class:`MuController`."""

    target_mb = None

    def __init__(self, mu: float):
        self.mu = float(mu)

    def update(self, size_mb: float) -> float:
        return self.mu

    def calibrate(self, size_mb: float, true_mb: float) -> None:
        """Nothing to calibrate."""

    def state_dict(self) -> dict:
        return {"mu": self.mu}

    def load_state_dict(self, state: dict) -> None:
        self.mu = state["mu"]


def file_sizer(quantizer, file: bool):
    """What the budget helpers fit: None (the true size) or, aiming at the file, the coded
    size at integer widths from tables measured on the weights now (``quant/coded.py``)."""
    return quantizer.refresh_file_tables().widths_mb if file else None


def start_control(quantizer, mu: float, target_mb: float | None, file: bool = False,
                  sensitivity: dict | None = None, bits_opt=None):
    """A fixed mu, or (with a target) the controller, every group starting at the aimed size
    (the true size, or with ``file`` the entropy-coded file's; with ``sensitivity``, widths
    per tensor by expected loss per bit, ``run/sensitivity.py``). Linear widths aiming at the
    true size are also projected onto the aim after every step of ``bits_opt``
    (``quant/project.py``): the budget is held while they learn."""
    if target_mb is None:
        return FixedMu(mu)
    from diffq_cli.quant.budget import start_at_size
    from diffq_cli.quant.project import project_to_budget

    control = MuController(target_mb)
    start_at_size(quantizer, control.aim_mb, file_sizer(quantizer, file), sensitivity)
    if bits_opt is not None and not file and getattr(quantizer, "param", None) == "linear":
        # Registered after the quantizer's own clamp into [min_bits, max_bits], so it runs next.
        bits_opt.register_step_post_hook(
            lambda *_: project_to_budget(quantizer, control.aim_mb, control.offset, fill=True))
    return control


def size_term(run, target_mb, file: bool = False):
    """``add_terms`` of the DiffQ stage (``run``: train.py's ``_Run``): the size penalty (the
    true size, or with ``file`` the coded file's, see ``quant/coded.py``) and the controller's
    dual step. Every ``CALIBRATE_EVERY`` steps the controller learns how far the penalty is from
    the size it aims at; aiming at the file, the coded tables are measured again first."""
    from torch.nn.parallel import DistributedDataParallel

    quantizer, control = run.quantizer, run.control

    def add(task):
        if getattr(quantizer, "frozen", False):  # widths final: no size term, mu stays put
            if isinstance(run.stage.net, DistributedDataParallel):
                # DDP reduces gradients in buckets and waits for every parameter it wraps: a
                # parameter left out of the graph would leave its bucket (weights included)
                # unreduced. A zero-weighted size keeps the widths in it; they are no longer
                # in any optimizer, so their (zero) gradients move nothing.
                return task.float() + 0.0 * quantizer.model_size(), run.frozen_size
            return task.float(), run.frozen_size
        due = run.stage.step % CALIBRATE_EVERY == 0
        if due and file:  # with --mu too: the tables follow the weights
            quantizer.refresh_file_tables()
        size = quantizer.model_size(file=file)
        loss = task.float() + control.mu * size
        if target_mb is not None:
            if due:
                now = quantizer.file_model_size() if file else quantizer.true_model_size()
                control.calibrate(float(size.detach()), now)
            control.update(float(size.detach()))  # dual ascent on mu
        return loss, size

    return add


def fit_widths(quantizer, target_mb: float, fill: bool = False, file_mb=None,
               sensitivity: list | None = None) -> dict:
    """Fits the integer widths to a target (``quant.budget.fit_budget``): the true size; or,
    given ``file_mb() -> MiB`` (the real file of the state now), the file: the coded tables
    aim below it (``FILE_AIM`` with ``fill``, where training follows; just under it when only
    lowering what is over), the coder measures, and the aim is corrected (a few rounds) until
    the file fits (and, with ``fill``, is over ``FILE_FLOOR`` of the target). ``sensitivity``
    (per group): which groups change, by expected loss per bit (``quant/allocate.py``)."""
    from diffq_cli.quant.budget import fit_budget

    if file_mb is None:
        return fit_budget(quantizer, target_mb, fill=fill, sensitivity=sensitivity)
    if not fill:  # only lowering what is over: a file that fits stays as it is
        real = file_mb()
        if real <= target_mb:
            return {"fits": True, "true_mb": quantizer.true_model_size(), "file_mb": real,
                    "lowered": 0, "raised": 0, "tau": 0.0}
    sizer, share = file_sizer(quantizer, True), FILE_AIM if fill else 0.995
    aim = target_mb * share
    for _ in range(FILE_ROUNDS):
        fit = fit_budget(quantizer, aim, fill=fill, sizer=sizer, sensitivity=sensitivity)
        real = file_mb()
        fit.update(file_mb=real, fits=real <= target_mb)
        if real <= target_mb and (not fill or real >= target_mb * FILE_FLOOR):
            break
        aim *= target_mb * share / real
    return fit


def fit_target(quantizer, target_mb: float | None, reporter, file_mb=None, label=None,
               sensitivity: list | None = None) -> dict:
    """With a target, lowers the widths that cost least until the size fits (``fit_widths``);
    says how many groups it lowered."""
    if target_mb is None:
        return {}
    fit = fit_widths(quantizer, target_mb, file_mb=file_mb, sensitivity=sensitivity)
    if fit["lowered"]:
        what = (f"file {fit['file_mb']:.3f} MiB" if "file_mb" in fit
                else f"true size {fit['true_mb']:.3f} MiB")
        how = ("by loss per bit" if sensitivity is not None
               else f"by rounding {fit['tau']:.3f} bits lower")
        reporter.note(f"{label or f'target={target_mb:g}MiB'}: lowered {fit['lowered']} group "
                      f"widths {how}; {what}")
    return fit


def size_bounds(model, recipe, file: bool = False) -> tuple[float, float]:
    """(floor, size at init_bits) in MB: every group at min_bits / init_bits, plus the floats
    (with ``file``: the coded file's estimated size)."""
    from diffq_cli.quant.budget import size_at_bits, size_floor
    from diffq_cli.run.steps import build_quantizer

    quantizer = build_quantizer(model, recipe.quant)
    try:
        sizer = file_sizer(quantizer, file)
        return size_floor(quantizer, sizer), size_at_bits(quantizer, quantizer.init_bits, sizer)
    finally:
        quantizer.detach()


def check_targets(model, recipe, reporter) -> None:
    """Exit 2 before any training when a target is below the reachable floor."""
    from diffq_cli.errors import InputError

    file = recipe.train.target_size == "file"
    floor, at_init = size_bounds(model, recipe, file)
    q, low, kind = recipe.quant, min(recipe.train.target_mb), "file " if file else ""
    if low < floor:
        raise InputError(
            f"--target-mb {low:g} is below the smallest reachable {kind}size {floor:.3f} MiB "
            f"(every group at quant.min_bits={q.min_bits}, plus the tensors kept in float); "
            f"{at_init:.3f} MiB at quant.init_bits={q.init_bits}. Raise the target, or lower "
            "quant.min_bits / quant.min_size (fewer float tensors)"
        )
    reporter.note(f"size targets{' (file)' if file else ''}: floor {floor:.3f} MiB "
                  f"(min_bits={q.min_bits}), {at_init:.3f} MiB at init_bits={q.init_bits}")
