"""CLI conventions (issue 11, points 4, 6 and 7): -h, shell completion, help texts with the
recipe defaults, `models` substring matching and its name cache, --json everywhere, gate
outcomes in the JSON, eval/size options, `recipes NAME --copy`."""

import json
import os
import subprocess
import sys

import pytest
from artifact_factory import make_artifact
from cli_helpers import one_error_line, run

from diffq_cli.config.load import default_values, load_recipe, recipe_text

COMMANDS = ("finetune", "size", "eval", "export", "recipes", "models")


def flat(text: str) -> str:
    """Help text with the line wrapping undone."""
    return " ".join(text.split())


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    path = tmp_path_factory.mktemp("habits") / "model.th"
    make_artifact(path)
    return path


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_short_help_option(command):
    args = ["-h"] if command is None else [command, "-h"]
    result = run(*args)
    assert result.exit_code == 0 and result.stdout.startswith("Usage: ")
    assert result.stdout == run(*args[:-1], "--help").stdout


def test_shell_completion():
    env = {**os.environ, "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}
    cmd = [sys.executable, "-m", "diffq_cli"]
    script = subprocess.run([*cmd, "--show-completion", "bash"], capture_output=True, text=True,
                            env=env, timeout=60)
    assert script.returncode == 0 and "_DIFFQ_COMPLETE=complete_bash" in script.stdout
    env.update(_DIFFQ_COMPLETE="complete_bash", COMP_WORDS="diffq fin", COMP_CWORD="1")
    words = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
    assert words.stdout.split() == ["finetune"]
    assert "--install-completion" in run("--help").stdout


def test_finetune_help_shows_repeatable_mu_and_recipe_defaults():
    text = flat(run("finetune", "--help").stdout)
    assert "--mu FLOAT (repeatable)" in text
    defaults = default_values()
    for flag, key in (("--epochs N", "train.epochs"), ("--float-epochs N", "train.float_epochs"),
                      ("--model NAME", "model.name"), ("--seed N", "train.seed")):
        after = text.split(flag, 1)[1]
        first_bracket = after[: after.index("]") + 1]  # this option's help ends with its default
        assert first_bracket.endswith(f"[recipe default: {defaults[key]}]"), (flag, after)


def test_models_matches_substrings_and_globs():
    sub = run("models", "resnet")
    assert sub.exit_code == 0
    names = [line.split()[0] for line in sub.stdout.splitlines()]
    assert "resnet18" in names and "seresnet50" in names and "wide_resnet50_2" in names
    glob = [line.split()[0] for line in run("models", "resnet1*").stdout.splitlines()]
    assert "resnet18" in glob and "seresnet18" not in glob
    doc = json.loads(run("models", "resnet1*", "--json").stdout)
    assert {"name": "resnet18", "source": "torchvision"} in doc
    assert [row["name"] for row in doc] == glob


def test_model_names_come_from_a_cache_keyed_by_versions(tmp_path, monkeypatch):
    from importlib.metadata import version

    monkeypatch.setenv("DIFFQ_CACHE_DIR", str(tmp_path))
    assert run("models", "resnet18").exit_code == 0
    cache = tmp_path / "model-names.json"
    stored = json.loads(cache.read_text())
    assert stored["key"]["timm"] == version("timm") and "resnet18" in stored["value"]["timm"]
    stored["value"] = {"timm": ["cached_only_net"], "torchvision": []}
    cache.write_text(json.dumps(stored))
    assert "cached_only_net" in run("models", "cached_only").stdout  # read back, not rebuilt
    stored["key"]["timm"] = "0.0.0"  # another timm version: the list is rebuilt
    cache.write_text(json.dumps(stored))
    assert run("models", "cached_only").exit_code == 2
    assert "resnet18" in json.loads(cache.read_text())["value"]["timm"]


def test_models_with_a_warm_cache_import_no_torch(tmp_path):
    env = {**os.environ, "DIFFQ_CACHE_DIR": str(tmp_path)}
    code = ("import sys; from diffq_cli.models.factory import list_models, resolve_model; "
            "list_models('resnet'); resolve_model('resnet18'); "
            "print(sorted(m for m in ('torch', 'timm', 'torchvision') if m in sys.modules))")
    for expected in (None, "[]"):  # first call fills the cache, the second must not import
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env=env, timeout=120, check=True)
        assert expected is None or out.stdout.strip() == expected


def test_json_for_recipes_and_print_config():
    listing = json.loads(run("recipes", "--json").stdout)
    assert listing[0]["name"] == "default" and listing[0]["description"]
    one = json.loads(run("recipes", "cifar10-resnet18", "--json").stdout)
    assert one == json.loads(json.dumps(
        __import__("diffq_cli.config.load").config.load.recipe_to_dict(load_recipe("cifar10-resnet18"))))
    config = run("finetune", "--print-config", "--json", "--mu", "0.5", "optim.lr=0.2")
    doc = json.loads(config.stdout)
    assert doc["train"]["mu"] == [0.5] and doc["optim"]["lr"] == 0.2


def test_print_config_checks_the_model_name():
    result = run("finetune", "--print-config", "--model", "resnt18")
    assert result.exit_code == 2 and "did you mean: resnet18" in one_error_line(result)


def test_size_gate_in_json(artifact):
    failed = run("size", artifact, "--json", "--max-mb", "0.001")
    assert failed.exit_code == 1
    assert json.loads(failed.stdout)["gate"] == {"max_mb": 0.001, "passed": False,
                                                  "size": "file"}
    passed = json.loads(run("size", artifact, "--json", "--max-mb", "100").stdout)
    assert passed["gate"] == {"max_mb": 100.0, "passed": True, "size": "file"}
    assert json.loads(run("size", artifact, "--json").stdout)["gate"] is None


def test_size_gate_on_the_true_size(artifact):
    doc = json.loads(run("size", artifact, "--json").stdout)
    true_mb, file_mb = doc["true_mb"], doc["file_bytes"] / 2**20
    between = (true_mb + file_mb) / 2  # the file fits under it, the true size does not
    assert true_mb > file_mb
    assert run("size", artifact, "--max-mb", str(between)).exit_code == 0
    failed = run("size", artifact, "--max-mb", str(between), "--size", "true")
    assert failed.exit_code == 1 and "(true size), over --max-mb" in one_error_line(failed)
    bad = run("size", artifact, "--size", "coded")
    assert bad.exit_code == 2 and "--size must be file or true" in one_error_line(bad)


def test_eval_options_and_gate_in_json(artifact):
    result = run("eval", artifact, "--json", "--device", "cpu", "--batch-size", "7",
                 "--val-subset", "20", "--min-acc", "99.9")
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert doc["samples"] == 20 and doc["gate"] == {"min_acc": 99.9, "passed": False}
    for bad in (["--batch-size", "0"], ["--val-subset", "0"], ["--device", "gpu9"]):
        assert run("eval", artifact, *bad).exit_code == 2


def test_export_gate_in_json(artifact, tmp_path):
    result = run("export", artifact, "-o", tmp_path / "m.pt2", "--format", "pt2", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["gate"] == {"atol": 1e-4, "passed": True}


def test_size_top_and_no_layers(artifact):
    full = json.loads(run("size", artifact, "--json").stdout)["layers"]
    top = json.loads(run("size", artifact, "--json", "--top", "2").stdout)["layers"]
    largest = sorted(full, key=lambda r: -r["mb"])[:2]
    assert len(full) > 2 and top == largest
    table = run("size", artifact, "--top", "2").stdout
    assert "Largest 2 layers" in table
    assert sum(row["name"] in table for row in full) == 2
    bare = run("size", artifact, "--no-layers")
    assert bare.exit_code == 0 and "true quantized size" in bare.stdout
    assert not any(row["name"] in bare.stdout for row in full)
    assert json.loads(run("size", artifact, "--json", "--no-layers").stdout)["layers"] == []
    assert run("size", artifact, "--top", "0").exit_code == 2


def test_recipes_copy(tmp_path):
    dest = tmp_path / "my.yaml"
    result = run("recipes", "fashion-mnist-resnet18", "--copy", dest)
    assert result.exit_code == 0 and dest.read_text() == recipe_text("fashion-mnist-resnet18")
    assert load_recipe(str(dest)).data.dataset == "fashion-mnist"  # usable as --recipe
    dest.write_text("# my edits\n")
    again = run("recipes", "default", "--copy", dest)
    assert again.exit_code == 2 and "--force" in one_error_line(again)
    assert dest.read_text() == "# my edits\n"  # untouched
    forced = run("recipes", "default", "--copy", dest, "--force")
    assert forced.exit_code == 0 and dest.read_text() == recipe_text("default")
    assert run("recipes", "--copy", tmp_path / "x.yaml").exit_code == 2
    assert run("recipes", "nope", "--copy", tmp_path / "y.yaml").exit_code == 2
    assert not (tmp_path / "y.yaml").exists()


def test_help_reads_the_recipe_when_shown_and_names_a_broken_one(tmp_path, monkeypatch):
    import diffq_cli.config.load as recipe

    (tmp_path / "default.yaml").write_text("train: [epochs: 3\n")
    monkeypatch.setattr(recipe, "RECIPES_DIR", tmp_path)
    assert run("--help").exit_code == 0  # the root help does not read the recipe
    broken = run("finetune", "--help")
    assert broken.exit_code == 2
    assert "default.yaml" in broken.stderr and "not valid YAML" in broken.stderr
    monkeypatch.undo()
    assert "[recipe default: " in run("finetune", "--help").stdout
