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
- **Steer the true size.** ``model_size()`` uses real-valued bits, the artifact rounds them
  (headers are counted alike: ``quant/sizes.py``). Every ``CALIBRATE_EVERY`` steps the loop
  measures both and the controller steers ``model_size() - offset``, the estimate of the true
  size, not the raw penalty.
- **Aim a little below X** (``AIM`` = 0.97): rounding moves the true size a little between
  calibrations; the fit when the widths freeze (``SizeTarget.fit``) then spends what is left.
- **Start at the budget.** Adam moves each logit by at most about ``bits_lr`` per step, so a
  short fine-tune cannot travel from 8 bits down to 3; the run therefore starts at integer
  widths whose true size is at the aim, chosen per tensor by expected loss per bit
  (``quant.budget.start_at_size``), and spends its steps redistributing bits between groups,
  which is what DiffQ learns. A uniform real-valued start (e.g. 2.4 bits everywhere) was tried
  first: it rounds to 2 bits everywhere, trains with less noise than it is evaluated with, and
  collapsed resnet18 on Fashion-MNIST at a 3 MB target.
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


class SizeTarget:
    """The size side of one DiffQ run: the start, the penalty each step, the freeze, the end.

    With ``target_mb`` the widths start at the aimed size by expected loss per bit (measured on
    the float model, ``run/sensitivity.py``), mu is the controller's, and when the widths
    freeze they are fitted to the target by the same price (lowered until they fit, raised
    while they fit), so the run lands on it. Without, mu is fixed and nothing is fitted.

    Args:
        quantizer: the run's DiffQuantizer.
        mu: the fixed penalty (ignored with a target).
        target_mb: the budget (true size, or with ``file_mb`` the artifact's), or None.
        file_mb: ``() -> MiB`` of the artifact the state now would be written to, when the
            penalty and the target are the coded file's (``--size file``), else None.
        squares: squared gradients of the float model per parameter (``grad_squares``), with
            a target.
    """

    def __init__(self, quantizer, mu: float, target_mb: float | None, file_mb=None,
                 squares: dict | None = None, ctx=None):
        self.quantizer, self.target_mb, self.file_mb = quantizer, target_mb, file_mb
        self.file = file_mb is not None
        self.control = FixedMu(mu) if target_mb is None else MuController(target_mb)
        self._grad_sums = None
        if target_mb is not None:
            from diffq_cli.quant.budget import start_at_size
            from diffq_cli.run.sensitivity import group_grad_sums, tensor_sensitivity

            start_at_size(quantizer, self.control.aim_mb,
                          tensor_sensitivity(quantizer.model, squares, ctx),
                          file_sizer(quantizer, self.file))
            self._grad_sums = group_grad_sums(quantizer, squares, ctx)

    @property
    def mu(self) -> float:
        return self.control.mu

    def penalty(self, step: int):
        """``(mu * model_size(), model_size())`` for this step, and the controller's dual step.
        Every ``CALIBRATE_EVERY`` steps the controller learns how far the penalty is from the
        size it aims at; aiming at the file, the coded tables are measured again first."""
        quantizer, control = self.quantizer, self.control
        due = step % CALIBRATE_EVERY == 0
        if due and self.file:  # with --mu too: the tables follow the weights
            quantizer.refresh_file_tables()
        size = quantizer.model_size(file=self.file)
        if self.target_mb is not None:
            if due:
                now = quantizer.file_model_size() if self.file else quantizer.true_model_size()
                control.calibrate(float(size.detach()), now)
            control.update(float(size.detach()))  # dual ascent on mu
        return control.mu * size, size

    def fit(self, late: bool = False) -> dict:
        """Fits the integer widths to the target (``quant.budget.fit_budget``), by loss per
        bit: at the freeze, lowered until they fit and raised while they fit (training follows);
        ``late`` (the end, when no frozen phase fitted them), only lowered where over. Aiming
        at the file, the coded tables aim below it (``FILE_AIM``), the coder measures, and the
        aim is corrected (a few rounds) until the file fits (and, filling, is over
        ``FILE_FLOOR`` of it). {} without a target."""
        from diffq_cli.quant.budget import fit_budget

        quantizer, target_mb, fill = self.quantizer, self.target_mb, not late
        if target_mb is None:
            return {}
        price = self._prices()
        if not self.file:
            return fit_budget(quantizer, target_mb, fill=fill, sensitivity=price)
        if late and (real := self.file_mb()) <= target_mb:  # only lowering: a file that fits
            return {"fits": True, "true_mb": quantizer.true_model_size(),  # stays as it is
                    "file_mb": real, "lowered": 0, "raised": 0, "tau": 0.0}
        sizer, share = file_sizer(quantizer, True), 0.995 if late else FILE_AIM
        aim = target_mb * share
        for _ in range(FILE_ROUNDS):
            fit = fit_budget(quantizer, aim, fill=fill, sizer=sizer, sensitivity=price)
            real = self.file_mb()
            fit.update(file_mb=real, fits=real <= target_mb)
            if real <= target_mb and (late or real >= target_mb * FILE_FLOOR):
                break
            aim *= target_mb * share / real
        return fit

    def _prices(self) -> list | None:
        """Each group's loss per unit of 4^-bits on its grid now (``allocate``), or None."""
        from diffq_cli.quant.allocate import group_sensitivity

        if self._grad_sums is None:
            return None
        return group_sensitivity(self.quantizer, self._grad_sums)

    def state_dict(self) -> dict:
        return self.control.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.control.load_state_dict(state)


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
