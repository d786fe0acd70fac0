"""``accuracy`` on a loader and ``evaluate_artifact``: the model rebuilt from the artifact alone."""

import pytest
import torch
from artifact_factory import INPUT_SIZE, make_artifact
from torch import nn

from diffq_cli.config.schema import DataConfig
from diffq_cli.data.loaders import build_loaders
from diffq_cli.errors import InputError
from diffq_cli.files.artifact import read_file, rebuild_model
from diffq_cli.run.evaluate import accuracy, count_correct, evaluate_artifact

DIGITS_VAL = 359  # the embedded digits set: 1,797 images, 20 % held out


class WithAux(nn.Module):
    """Returns (logits, auxiliary): accuracy must use the first."""

    def forward(self, x):
        return x, -x


def batches():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [0.0, 1.0]])
    return [(logits[:2], torch.tensor([0, 1])), (logits[2:], torch.tensor([1, 1]))]


def test_accuracy_counts_top1_and_restores_the_mode():
    model = nn.Identity()  # the "images" are the logits
    model.train()
    assert accuracy(model, batches()) == pytest.approx(75.0)
    assert model.training  # the training loop calls it between steps
    assert accuracy(model, batches(), max_batches=1) == pytest.approx(100.0)
    assert count_correct(WithAux(), batches()) == (3, 4)
    assert accuracy(model, []) == 0.0


def test_accuracy_sees_eval_mode():
    seen = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append((self.training, torch.is_grad_enabled()))
            return x

    accuracy(Probe().train(), batches())
    assert seen == [(False, False), (False, False)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    path = tmp_path_factory.mktemp("eval") / "model.th"
    make_artifact(path, steps=8, metrics={"accuracy": 42.0})
    return path


def test_evaluate_artifact_on_its_recorded_dataset(trained):
    result = evaluate_artifact(trained)
    assert result["dataset"] == "digits" and result["model"] == "test_resnet"
    assert result["samples"] == DIGITS_VAL and result["recorded_accuracy"] == 42.0
    assert 15.0 < result["accuracy"] <= 100.0  # 8 steps already beat chance (10 %)
    # Same number as the quantized model evaluated by hand on the same split.
    _, val, _ = build_loaders(DataConfig(dataset="digits", input_size=INPUT_SIZE))
    model = rebuild_model(read_file(trained)[1])
    assert result["accuracy"] == pytest.approx(accuracy(model, val))
    # Another batch size sums the logits in another order: a near-tie may flip one image.
    other = evaluate_artifact(trained, dataset="Digits", batch_size=100)
    assert {k: v for k, v in other.items() if k != "accuracy"} == \
        {k: v for k, v in result.items() if k != "accuracy"}
    assert abs(other["accuracy"] - result["accuracy"]) <= 100 / DIGITS_VAL + 1e-9


def test_mismatched_dataset_is_one_line(tmp_path):
    rgb = tmp_path / "rgb.th"
    make_artifact(rgb, in_chans=3)
    with pytest.raises(InputError, match="3 channel") as info:
        evaluate_artifact(rgb)
    assert "\n" not in str(info.value)
    five = tmp_path / "five.th"
    make_artifact(five, num_classes=5)
    with pytest.raises(InputError, match="10 classes"):
        evaluate_artifact(five)


def test_bad_inputs(trained, tmp_path):
    with pytest.raises(InputError, match="no such file"):
        evaluate_artifact(tmp_path / "missing.th")
    junk = tmp_path / "junk.th"
    junk.write_bytes(b"garbage" * 50)
    with pytest.raises(InputError):
        evaluate_artifact(junk)
    state = tmp_path / "state.th"
    torch.save(read_file(trained)[1]["state"], state)
    with pytest.raises(InputError, match="not an artifact"):
        evaluate_artifact(state)
    with pytest.raises(InputError, match="data-dir"):
        evaluate_artifact(trained, dataset="mnist")
    with pytest.raises(InputError, match="unknown dataset"):
        evaluate_artifact(trained, dataset="imagenet-42")
