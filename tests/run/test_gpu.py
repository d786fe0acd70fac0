"""CUDA checks, run by ``bench/gpu_check.sh`` (``pytest -m gpu``); skipped without CUDA.

A DiffQ training step on the GPU, mixed-precision steps (bf16, and fp16 with a GradScaler) with
channels-last, a save/restore round trip of the quantized state, and a short ``finetune`` run.
"""

import io
import json
import math

import pytest
import torch
from torch import nn

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _setup(group_size=8, channels_last=False):
    from diffq_cli.models.factory import create_model
    from diffq_cli.quant import DiffQuantizer

    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=10, in_chans=3).cuda()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    quantizer = DiffQuantizer(model, group_size=group_size)
    bits_opt = torch.optim.Adam([{"params": []}])
    quantizer.setup_optimizer(bits_opt, lr=1e-3)
    return model, optimizer, bits_opt, quantizer


def _batch(n=32, channels_last=False):
    x = torch.randn(n, 3, 32, 32, device="cuda")
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, torch.randint(0, 10, (n,), device="cuda")


def _bits(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if n.endswith("_diffq")}


def test_diffq_train_step_on_cuda():
    model, optimizer, bits_opt, quantizer = _setup()
    before = _bits(model)
    assert before and all(v.is_cuda for v in before.values())
    model.train()
    for _ in range(3):
        x, y = _batch()
        loss = nn.functional.cross_entropy(model(x), y) + 1e-3 * quantizer.model_size()
        assert loss.is_cuda and math.isfinite(float(loss.detach()))
        optimizer.zero_grad()
        bits_opt.zero_grad()
        loss.backward()
        optimizer.step()
        bits_opt.step()
    after = _bits(model)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(_batch()[0])).all()


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_step_keeps_noise_fp32(amp):
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    model, optimizer, bits_opt, quantizer = _setup(channels_last=True)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == "fp16")
    seen = []
    model.conv1.register_forward_pre_hook(lambda m, a: seen.append(m.weight.dtype))
    model.train()
    for _ in range(2):
        x, y = _batch(channels_last=True)
        with torch.autocast("cuda", dtype=dtype):
            out = model(x)
            task = nn.functional.cross_entropy(out, y)
        assert out.dtype == dtype
        loss = task.float() + 1e-3 * quantizer.model_size()
        assert math.isfinite(float(loss.detach()))
        optimizer.zero_grad()
        bits_opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.step(bits_opt)
        scaler.update()
    assert seen and all(d == torch.float32 for d in seen)  # noisy weights stay fp32
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_state_round_trip_on_cuda():
    from diffq_cli.models.factory import create_model
    from diffq_cli.quant import restore_quantized_state

    model, optimizer, bits_opt, quantizer = _setup()
    x, y = _batch()
    model.train()
    loss = nn.functional.cross_entropy(model(x), y) + 1e-3 * quantizer.model_size()
    loss.backward()
    optimizer.step()
    bits_opt.step()
    model.eval()
    with torch.no_grad():
        expected = model(x)
    buffer = io.BytesIO()
    torch.save(quantizer.get_quantized_state(), buffer)
    state = torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
    fresh = create_model("resnet18", num_classes=10, in_chans=3).cuda().eval()
    restore_quantized_state(fresh, state)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), expected, rtol=1e-4, atol=1e-4)
    on_cpu = create_model("resnet18", num_classes=10, in_chans=3).eval()
    restore_quantized_state(on_cpu, state)
    with torch.no_grad():
        torch.testing.assert_close(on_cpu(x.cpu()), expected.cpu(), rtol=1e-3, atol=1e-3)


def test_finetune_on_cuda(tmp_path):
    from typer.testing import CliRunner

    from diffq_cli.cli.app import app

    args = ["finetune", "--model", "resnet18", "--epochs", "1", "--max-steps", "3",
            "data.input_size=32", "data.train_subset=256", "data.val_subset=128",
            "train.float_epochs=0", "--device", "cuda", "--amp", "bf16", "--channels-last",
            "--output", str(tmp_path / "run"), "--json"]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    run = json.loads(result.stdout)["runs"][0]
    from diffq_cli.run.evaluate import evaluate_artifact

    # The artifact alone, rebuilt on the GPU, scores what the run recorded (within one of the
    # 128 validation images: cuDNN may pick other kernels).
    rebuilt = evaluate_artifact(tmp_path / "run" / "model.th", device="cuda")
    assert rebuilt["samples"] == 128
    assert abs(rebuilt["accuracy"] - run["accuracy"]) <= 100 / 128 + 1e-9


@pytest.mark.parametrize("frozen", [False, True])
def test_a_training_step_never_waits_for_the_device(frozen):
    # Warm-up steps build the per-device constants (cached in ``quant/ops.py``) and the noise pool;
    # after that a noisy step (and a frozen-width straight-through step) must queue kernels
    # without any device-to-host copy: sync debug mode turns one into an error.
    model, optimizer, bits_opt, quantizer = _setup()
    model.train()
    x, y = _batch()
    quantizer.freeze_bits(frozen)

    def step():
        optimizer.zero_grad()
        bits_opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y) + 1e-3 * quantizer.model_size()
        loss.backward()
        optimizer.step()
        bits_opt.step()

    for _ in range(2):
        step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
