"""Small artifacts for the export and eval tests, built directly (no finetune run needed)."""

import torch

from diffq_cli import DiffQuantizer
from diffq_cli.config.schema import DataConfig
from diffq_cli.data.loaders import build_loaders
from diffq_cli.files.artifact import save_artifact
from diffq_cli.models.factory import create_model

MODEL = "test_resnet"  # timm's 0.4M-parameter test network: exports in a few seconds
INPUT_SIZE = 16


def digits_info(input_size: int = INPUT_SIZE) -> dict:
    """The data section finetune records for the embedded digits set."""
    return build_loaders(DataConfig(dataset="digits", input_size=input_size, train_subset=1,
                                  val_subset=1))[2]


def make_artifact(path, name=MODEL, num_classes=10, in_chans=1, steps=0, seed=0,
                  metrics=None, **quant) -> dict:
    """Writes an artifact of ``name`` with spread bit widths; returns ``{"path", "true_mb"}``.

    Args:
        steps: DiffQ training steps on digits first (0: random weights).
        quant: more ``DiffQuantizer`` options (``grid``, ``min_bits``, ``max_bits``).
    """
    torch.manual_seed(seed)
    model = create_model(name, num_classes=num_classes, in_chans=in_chans)
    quantizer = DiffQuantizer(model, group_size=8, **quant)
    if steps:
        train, _, _ = build_loaders(DataConfig(dataset="digits", input_size=INPUT_SIZE,
                                               batch_size=64), seed=seed)
        opt = torch.optim.Adam([p for n, p in model.named_parameters()
                                if not n.endswith("_diffq")], lr=3e-3)
        quantizer.setup_optimizer(opt)
        model.train()
        for step, (x, y) in enumerate(train):
            if step == steps:
                break
            loss = torch.nn.functional.cross_entropy(model(x), y) + 1e-3 * quantizer.model_size()
            opt.zero_grad()
            loss.backward()
            opt.step()
    else:
        quantizer.no_optimizer()
        # Logits spread over about 2 to 8 bits: several packed widths in every tensor.
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for pname, p in model.named_parameters():
                if pname.endswith("_diffq"):
                    p.copy_(torch.rand(p.shape, generator=gen) * 6 - 6)
    state = quantizer.get_quantized_state()
    true_mb = quantizer.true_model_size()
    save_artifact(path, state, dict(model.diffq_spec), digits_info(), {"data": {}},
                  metrics if metrics is not None else {"accuracy": 12.5, "true_mb": true_mb})
    return {"path": path, "true_mb": true_mb}
