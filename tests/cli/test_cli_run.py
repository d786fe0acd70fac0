"""``diffq finetune`` run length and run directory (issue 11, points 1 and 5): --max-steps caps
the float stage, --float-epochs, starting weights skip the float stage, notes print once,
checkpoint.pt is removed after a finished run unless --keep-checkpoint."""

import pytest
import torch
from cli_helpers import run

from diffq_cli.models.factory import create_model

# Like test_cli.FAST, but leaving train.float_epochs to the recipe (the default recipe has 2).
BASE = [
    "--model", "resnet18", "--epochs", "1", "data.input_size=16", "data.train_subset=192",
    "data.val_subset=64", "data.batch_size=32",
]  # 6 steps per epoch


@pytest.fixture(scope="module")
def imagenet_like_weights(tmp_path_factory):
    """A resnet18 checkpoint for 3 channels and 1000 classes: loading it into the digits model
    adapts the first conv and re-initialises the head, which makes two notes."""
    path = tmp_path_factory.mktemp("weights") / "resnet18.pt"
    torch.save(create_model("resnet18", num_classes=1000, in_chans=3).state_dict(), path)
    return path


def test_max_steps_caps_the_float_stage(tmp_path):
    result = run("finetune", *BASE, "--float-epochs", "2", "--max-steps", "2",
                 "--output", tmp_path / "r")
    assert result.exit_code == 0, result.output
    assert "float epoch 1/2 step 2:" in result.stderr  # stopped after 2 of its 12 steps
    assert "float epoch 2/2" not in result.stderr
    assert (tmp_path / "r" / "float.pt").is_file()


def test_float_epochs_flag_sets_the_float_stage(tmp_path):
    result = run("finetune", *BASE, "--float-epochs", "1", "--max-steps", "1", "--print-config")
    assert result.exit_code == 0 and "float_epochs: 1" in result.stdout
    result = run("finetune", *BASE, "--float-epochs", "0", "--max-steps", "1",
                 "--output", tmp_path / "r")
    assert result.exit_code == 0, result.output
    assert "float epoch" not in result.stderr and not (tmp_path / "r" / "float.pt").exists()


def test_weights_skip_the_float_stage_and_notes_print_once(tmp_path, imagenet_like_weights):
    result = run("finetune", *BASE, "--weights", imagenet_like_weights, "--max-steps", "1",
                 "--mu", "0", "--mu", "1", "--output", tmp_path / "w")
    assert result.exit_code == 0, result.output
    assert "float epoch" not in result.stderr
    assert result.stderr.count("float pre-training skipped") == 1
    # Once, although two mu runs each build a fresh model.
    assert result.stderr.count("classifier fc re-initialised") == 1
    assert result.stderr.count("first conv conv1 adapted") == 1


def test_explicit_float_epochs_win_over_weights(tmp_path, imagenet_like_weights):
    result = run("finetune", *BASE, "--weights", imagenet_like_weights, "--float-epochs", "1",
                 "--max-steps", "1", "--output", tmp_path / "w")
    assert result.exit_code == 0, result.output
    assert "float epoch 1/1" in result.stderr and "float pre-training skipped" not in result.stderr
    config = run("finetune", "--pretrained", "train.float_epochs=3", "--print-config")
    assert "float_epochs: 3" in config.stdout and "skipped" not in config.stderr


def test_pretrained_defaults_the_float_stage_to_zero():
    result = run("finetune", "--pretrained", "--print-config")
    assert result.exit_code == 0
    assert "float_epochs: 0" in result.stdout and "float pre-training skipped" in result.stderr


def test_a_recipe_file_keeps_its_own_float_epochs(tmp_path):
    """A resolved config.yaml holding weights and float epochs reruns as it was written."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {weights: w.pt}\ntrain: {float_epochs: 2}\n")
    result = run("finetune", "--recipe", recipe, "--print-config")
    assert result.exit_code == 0 and "float_epochs: 2" in result.stdout


def test_checkpoint_removed_after_a_finished_run_unless_kept(tmp_path):
    common = [*BASE, "train.float_epochs=0", "--max-steps", "1"]
    assert run("finetune", *common, "--output", tmp_path / "a").exit_code == 0
    assert (tmp_path / "a" / "model.th").is_file()
    assert not (tmp_path / "a" / "checkpoint.pt").exists()
    sweep = run("finetune", *common, "--mu", "0", "--mu", "1", "--output", tmp_path / "b")
    assert sweep.exit_code == 0
    assert not list((tmp_path / "b").glob("**/checkpoint.pt"))
    kept = run("finetune", *common, "--keep-checkpoint", "--output", tmp_path / "c")
    assert kept.exit_code == 0
    assert torch.load(tmp_path / "c" / "checkpoint.pt", weights_only=True)["step"] == 1


def test_resume_refuses_a_finished_run_and_resumes_a_sweep(tmp_path,
                                                           interrupt_after_checkpoints):

    common = [*BASE, "--float-epochs", "1", "--max-steps", "1"]
    assert run("finetune", *common, "--output", tmp_path / "a").exit_code == 0
    again = run("finetune", *common, "--output", tmp_path / "a", "--resume")
    assert again.exit_code == 2 and "no checkpoint to resume" in again.stderr

    sweep = [*common, "--mu", "0", "--mu", "1", "--output", tmp_path / "s"]
    patched = interrupt_after_checkpoints(2)  # the first epoch of the second mu
    assert run("finetune", *sweep).exit_code == 130
    patched.undo()
    assert (tmp_path / "s" / "mu0" / "checkpoint.pt").is_file()  # kept until the sweep ends
    resumed = run("finetune", *sweep, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert "resumed mu=0 from" in resumed.stderr  # the finished mu is not trained again
    assert not list((tmp_path / "s").glob("**/checkpoint.pt"))


def test_freeze_bits_ends_with_frozen_widths(tmp_path, interrupt_after_checkpoints):
    """train.freeze_bits=0.5: the last half of the DiffQ steps keep the widths (the logits do not
    move from the step-3 checkpoint to the end) and train through true quantization; a
    resumed run is frozen again."""
    import torch

    out = tmp_path / "run"
    args = ["finetune", "--model", "test_resnet", "--epochs", "2", "--max-steps", "6",
            "data.input_size=16", "data.train_subset=96", "data.val_subset=32",
            "data.batch_size=32", "train.float_epochs=0", "--baseline", "none",
            "--keep-checkpoint", "train.freeze_bits=0.5", "--output", out]
    patched = interrupt_after_checkpoints(1)  # stop after epoch 1 (step 3)
    assert run(*args).exit_code == 130
    patched.undo()
    half = torch.load(out / "checkpoint.pt", weights_only=True)
    assert half["step"] == 3
    result = run(*args, "--resume")
    assert result.exit_code == 0, result.output
    assert "widths frozen at step 3" in result.stderr
    end = torch.load(out / "checkpoint.pt", weights_only=True)
    assert end["step"] == 6
    logits = [k for k in end["model"] if k.endswith("_diffq")]
    assert logits and all(torch.equal(end["model"][k], half["model"][k]) for k in logits)
    weights = [k for k in end["model"] if k.endswith("conv1.weight")]
    assert any(not torch.equal(end["model"][k], half["model"][k]) for k in weights)
