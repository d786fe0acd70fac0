"""Recipes: shipped YAMLs, overrides, flags, validation errors, dump/load round trip."""

import dataclasses
import re

import pytest

from diffq_cli.config.load import (
    dump_recipe,
    list_recipes,
    load_recipe,
    parse_override,
    recipe_text,
    recipe_to_dict,
)
from diffq_cli.config.schema import (
    QUANT_KEYS,
    DataConfig,
    QuantConfig,
    Recipe,
    TrainConfig,
)
from diffq_cli.errors import InputError
from diffq_cli.run.rundir import output_dir

SHIPPED = [name for name, _ in list_recipes()]


def test_list_recipes_has_the_shipped_five_default_first():
    assert SHIPPED[0] == "default"
    for name in ("fashion-mnist-resnet18", "cifar10-resnet18", "cifar100-mobilenetv2",
                 "imagenet-deit-tiny"):
        assert name in SHIPPED
    assert all(description for _, description in list_recipes())


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_recipe_loads_and_says_how_to_run(name):
    recipe = load_recipe(name)
    assert isinstance(recipe, Recipe) and recipe.name == name
    text = recipe_text(name)
    assert text.startswith("#") and "diffq finetune" in text.split("\n\n")[0]
    assert "description" in recipe_to_dict(recipe)


def test_default_recipe_matches_the_brief():
    r = load_recipe()
    assert (r.model.name, r.data.dataset, r.data.input_size) == ("resnet18", "digits", 32)
    assert (r.optim.name, r.optim.lr, r.optim.momentum, r.optim.schedule) == (
        "sgd", 0.05, 0.9, "cosine")
    assert r.optim.weight_decay == 5e-4 and r.optim.bits_lr == 2e-2
    assert r.quant.group_size == 8 and r.train.mu == (1e-3,) and r.data.batch_size == 64
    assert output_dir(r) == "runs/resnet18-digits-mu0.001"


def test_a_recipe_of_model_and_data_only_gets_the_default_recipes_diffq_settings(tmp_path):
    """One source of defaults: what a recipe leaves out takes the best measured value, the
    same the default recipe trains with."""
    path = tmp_path / "mine.yaml"
    path.write_text("model: {name: resnet18}\ndata: {dataset: digits}\n")
    mine, default = load_recipe(str(path)), load_recipe()
    for r in (mine, default):
        assert (r.quant.noise, r.train.freeze_bits, r.optim.bits_lr) == ("uniform", 0.25, 2e-2)
    assert recipe_to_dict(mine)["quant"] == recipe_to_dict(default)["quant"]
    assert (mine.train.epochs, mine.train.float_epochs) == (default.train.epochs,
                                                            default.train.float_epochs)
    assert load_recipe(str(path), ["model.pretrained=true"]).train.float_epochs == 0


@pytest.mark.parametrize("name", ["cifar10-resnet18", "cifar100-mobilenetv2",
                                  "imagenet-deit-tiny"])
def test_paper_recipes_set_the_papers_diffq_settings_explicitly(name):
    text = recipe_text(name)
    for key in ("noise: gaussian", "freeze_bits: 0.0", "bits_lr: 1.0e-3"):
        assert key in text, (name, key)
    assert "the paper's settings" in text.split("description:")[0]
    r = load_recipe(name)
    assert (r.quant.noise, r.train.freeze_bits, r.optim.bits_lr) == ("gaussian", 0.0, 1e-3)


@pytest.mark.parametrize("override, removed", [
    ("quant.param=linear", "quant.param"),
    ("optim.bits_travel=3", "optim.bits_travel"),
    ("train.start_widths=size", "train.start_widths"),
    ("train.fill_budget=true", "train.fill_budget"),
    ("quant.noise_source=fresh", "quant.noise_source"),
    ("quant.grid=channel", "quant.grid=channel"),
])
def test_options_that_lost_are_refused_with_what_to_do(override, removed):
    with pytest.raises(InputError, match=f"{re.escape(removed)}.* was removed: .+") as err:
        load_recipe("default", [override])
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("method, key", [("lsq", "quant.group_size=8"),
                                         ("uniform", "quant.noise=gaussian"),
                                         ("diffq", "quant.bits=4")])
def test_a_key_the_method_does_not_take_is_an_error_naming_both(method, key):
    with pytest.raises(InputError, match=rf"'{key.split('=')[0]}' is not a setting of "
                                         rf"quant.method={method} \(its keys: .*bits"):
        load_recipe("default", [f"quant.method={method}", key])


def test_each_method_dumps_only_its_own_keys_and_the_dump_loads_back(tmp_path):
    for method in QUANT_KEYS:
        r = load_recipe("default", [f"quant.method={method}"])
        assert set(recipe_to_dict(r)["quant"]) == {"method", *QUANT_KEYS[method]}
        path = tmp_path / f"{method}.yaml"
        path.write_text(dump_recipe(r))
        assert load_recipe(str(path)) == r


def test_paper_recipes():
    cifar = load_recipe("cifar10-resnet18")
    assert cifar.train.epochs == 200 and cifar.train.mu == (5.0,) and cifar.data.augment
    assert (cifar.optim.lr, cifar.data.batch_size, cifar.data.download) == (0.1, 128, False)
    deit = load_recipe("imagenet-deit-tiny")
    assert deit.model.name == "deit_tiny_patch16_224" and deit.model.pretrained
    assert (deit.optim.name, deit.optim.lr, deit.optim.weight_decay) == ("adamw", 5e-4, 0.05)
    assert deit.train.mu == (1e-2,) and deit.data.input_size == 224


def test_overrides_dotted_lists_floats_bools():
    r = load_recipe("default", ["optim.lr=1e-3", "train.mu=[1e-3, 1e-2]", "data.augment=true",
                                "quant.exclude=[fc.*, '*.bias']", "train.epochs=2",
                                "train.max_steps=null", "output=out/run"])
    assert r.optim.lr == 1e-3 and isinstance(r.optim.lr, float)
    assert r.train.mu == (1e-3, 1e-2)
    assert r.data.augment is True
    assert r.quant.exclude == ("fc.*", "*.bias")
    assert r.train.epochs == 2 and r.train.max_steps is None
    assert output_dir(r) == "out/run"


def test_override_values_that_are_not_yaml_and_string_keys():
    r = load_recipe(overrides=["quant.exclude=*.bias", "model.name=yes", "train.mu=0.1"])
    assert r.quant.exclude == ("*.bias",)
    assert r.model.name == "yes"  # not the YAML 1.1 boolean
    assert r.train.mu == (0.1,)
    assert load_recipe(overrides=["quant.exclude=[*.bias, fc.*]"]).quant.exclude == (
        "*.bias", "fc.*")
    assert parse_override("optim = {lr: 0.2}") == ("optim", {"lr": 0.2})
    assert load_recipe(overrides=["optim={lr: 0.2, name: adamw}"]).optim.name == "adamw"


def test_precedence_recipe_then_flags_then_overrides():
    flags = {"model.name": "mobilenet_v2", "train.mu": [1e-3, 1e-2], "train.epochs": 2,
             "data.data_dir": None}
    r = load_recipe("default", flags=flags)
    assert r.model.name == "mobilenet_v2" and r.train.mu == (1e-3, 1e-2)
    assert r.train.epochs == 2 and r.data.data_dir is None
    r = load_recipe("default", ["train.epochs=5"], flags)
    assert r.train.epochs == 5 and r.model.name == "mobilenet_v2"


@pytest.mark.parametrize(("override", "message"), [
    ("optim.lrr=0.1", "unknown recipe key 'optim.lrr'; did you mean 'optim.lr'?"),
    ("epochs=2", "did you mean 'train.epochs'?"),
    ("train.epochs=abc", "recipe key 'train.epochs' expects an integer, got 'abc'"),
    ("train.epochs=0", "'train.epochs' must be >= 1"),
    ("train.max_steps=0", "'train.max_steps' must be >= 1"),
    ("train.mu=-1", "mu must be >= 0, got -1"),
    ("train.mu=[1e-3, -1]", "mu must be >= 0, got -1"),
    ("train.mu=[]", "at least one value"),
    ("data.augment=1", "'data.augment' expects true or false"),
    ("data.batch_size=0", "'data.batch_size' must be >= 1"),
    ("optim.lr=0", "'optim.lr' must be > 0"),
    ("optim.lr=nan", "'optim.lr' expects a number"),
    ("optim.name=adam", "'optim.name' must be one of sgd, adamw"),
    ("quant.method=int8", "must be one of diffq, uniform, lsq"),
    ("quant.init_bits=16", "'quant.init_bits' must be between 1 and 15"),
    ("quant.min_bits=9", "quant.min_bits <= quant.init_bits <= quant.max_bits"),
    ("quant.group_size=-1", "'quant.group_size' must be >= 0"),
    ("quant.exclude=", "'quant.exclude' expects a list of strings"),
    ("model.pretrained=maybe", "'model.pretrained' expects true or false"),
    ("model=resnet18", "'model' is a section"),
    ("train.device=gpu", "'train.device' must be auto, cpu"),
    ("train.target_size=coded", "'train.target_size' must be one of true, file"),
    ("train.target_size=false", "'train.target_size' must be one of true, file; got 'false'"),
    ("optim.lr", "must have the form key=value"),
    ("=1", "must have the form key=value"),
])
def test_bad_overrides_raise_one_line_input_errors(override, message):
    with pytest.raises(InputError) as info:
        load_recipe(overrides=[override])
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_target_size_reads_yaml_true_as_the_word():
    # YAML 1.1 reads `target_size: true` (as recipes/default.yaml writes it) as a boolean.
    assert load_recipe("default").train.target_size == "true"
    assert load_recipe(overrides=["train.target_size=true"]).train.target_size == "true"
    assert load_recipe(overrides=["train.target_size=file"]).train.target_size == "file"


def test_bad_flag_type():
    with pytest.raises(InputError, match="'train.epochs' expects an integer"):
        load_recipe(flags={"train.epochs": "two"})
    with pytest.raises(InputError, match="unknown recipe key 'train.mus'"):
        load_recipe(flags={"train.mus": [1.0]})


def test_yaml_files_unknown_keys_missing_and_syntax_errors(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("train:\n  epochs: 1\n  mu: [1e-2]\noptim:\n  lr: 1e-3\n")
    r = load_recipe(str(path))
    assert r.name == "mine" and r.train.mu == (1e-2,) and r.optim.lr == 1e-3
    path.write_text("optim:\n  lrr: 0.1\n")
    with pytest.raises(InputError, match="did you mean 'optim.lr'"):
        load_recipe(str(path))
    path.write_text("train: [1, 2\n")
    with pytest.raises(InputError, match=r"not valid YAML.*line \d+") as info:
        load_recipe(str(path))
    assert "\n" not in str(info.value)
    path.write_text("- 1\n- 2\n")
    with pytest.raises(InputError, match="must be a mapping"):
        load_recipe(str(path))
    path.write_text("optim: 3\n")
    with pytest.raises(InputError, match="'optim' is a section"):
        load_recipe(str(path))
    with pytest.raises(InputError, match="not found"):
        load_recipe(str(tmp_path / "missing.yaml"))
    with pytest.raises(InputError, match="unknown recipe 'defualt'; did you mean 'default'"):
        load_recipe("defualt")
    with pytest.raises(InputError, match="available: default"):
        recipe_text("nope")


def test_empty_yaml_gives_built_in_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing\n")
    assert load_recipe(str(path)) == Recipe(name="empty")


@pytest.mark.parametrize("name", SHIPPED)
def test_dump_load_round_trip(tmp_path, name):
    recipe = load_recipe(name, ["train.mu=[1e-5, 0.5]", "quant.exclude=[fc.*]", "optim.lr=3e-4"])
    path = tmp_path / "config.yaml"
    path.write_text(dump_recipe(recipe))
    assert load_recipe(str(path)) == recipe
    assert recipe_to_dict(recipe)["train"]["mu"] == [1e-5, 0.5]


def test_dataclasses_are_frozen_and_coerce_direct_construction():
    r = Recipe()
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.train.epochs = 5  # type: ignore[misc]
    assert TrainConfig(mu=[1, "1e-3"]).mu == (1.0, 1e-3)
    assert QuantConfig(exclude=["a"]).exclude == ("a",)
    assert Recipe(data={"dataset": "cifar10"}).data == DataConfig(dataset="cifar10")
    spec = dataclasses.asdict(r.data)
    assert spec["dataset"] == "digits" and "seed" not in spec
    with pytest.raises(InputError, match="unknown recipe key 'data.dataset_name'"):
        Recipe(data={"dataset_name": "x"})


def test_the_cli_docs_list_every_key_with_its_built_in_value():
    """The built-in values live in the schema; docs/cli.md's table lists each one."""
    from pathlib import Path

    text = (Path(__file__).parents[2] / "docs" / "cli.md").read_text()
    built_in = recipe_to_dict(Recipe())
    keys = [f"{s}.{k}" for s, v in built_in.items() if isinstance(v, dict) for k in v]
    keys += ["output", "quant.bits", *(f"quant.{k}" for k in QUANT_KEYS["diffq"])]
    for key in keys:
        assert f"| `{key}` |" in text, key


def test_the_default_recipe_lists_what_a_user_edits_not_every_default():
    text = recipe_text("default")
    assert "freeze_bits" not in text and "bits_lr" not in text and "noise:" not in text
    assert load_recipe().train.freeze_bits == Recipe().train.freeze_bits

def test_importing_recipe_does_not_import_yaml():
    import subprocess
    import sys

    code = "import sys, diffq_cli.config.load; assert 'yaml' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_min_bits_defaults_to_the_grid_s_floor():
    """1 bit is a binary quantizer (+-alpha/2) on the mid-rise learned grid only."""
    from diffq_cli.config.load import Recipe

    assert Recipe().quant.min_bits == 2
    assert Recipe(quant={"grid": "learned"}).quant.min_bits == 1
    assert Recipe(quant={"grid": "learned", "min_bits": 2}).quant.min_bits == 2
    assert Recipe(quant={"min_bits": 1}).quant.min_bits == 1


@pytest.mark.parametrize("name", ["default", "fashion-mnist-resnet18"])
def test_shipped_recipes_take_the_grid_s_floor(name):
    from diffq_cli.config.load import load_recipe

    assert load_recipe(name).quant.min_bits == 2
    assert load_recipe(name, ["quant.grid=learned"]).quant.min_bits == 1


def test_baselines_are_one_or_several_and_all_trains_every_one():
    def trained(*values):
        return load_recipe("default", [f"train.baseline=[{','.join(values)}]"]
                           ).train.trained_baselines()

    assert load_recipe().train.baseline == ("ptq", "float")  # the default recipe's table
    assert Recipe().train.baseline == ("ptq",)
    assert trained("qat", "float") == ("float", "qat")
    assert trained("all") == ("float", "qat", "lsq")
    assert trained("ptq") == () and load_recipe("default", ["train.baseline=lsq"]
                                                ).train.baseline == ("lsq",)
    with pytest.raises(InputError, match="'none' cannot be combined"):
        trained("none", "qat")
    with pytest.raises(InputError, match="train.baseline' must be one of none, float, ptq"):
        trained("qatt")
