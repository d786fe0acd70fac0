"""Tests for diffq_cli.models.factory: names, sources, shapes, local weights, pretrained."""

import os
from urllib.error import URLError

import pytest
import torch

from diffq_cli.errors import InputError
from diffq_cli.models.factory import create_model, list_models
from diffq_cli.models.surgery import load_weights

OFFLINE = ("could not download pretrained weights for {} (offline?); "
           "pass --weights PATH to a local checkpoint")


def _forward(model, chans=1, size=32):
    model.eval()
    with torch.no_grad():
        return model(torch.randn(2, chans, size, size))


def test_resnet18_grayscale_ten_classes():
    model = create_model("resnet18", num_classes=10, in_chans=1)
    assert model.conv1.in_channels == 1 and model.fc.out_features == 10
    assert _forward(model).shape == (2, 10)
    assert model.diffq_spec == {"name": "resnet18", "source": "torchvision", "num_classes": 10,
                                 "in_chans": 1, "input_size": None}


def test_mobilenet_v2_first_conv_replaced():
    model = create_model("mobilenet_v2", num_classes=7, in_chans=1)
    assert model.features[0][0].in_channels == 1
    assert _forward(model).shape == (2, 7)


@pytest.mark.parametrize("name,input_size", [("test_vit", 32), ("test_resnet", None)])
def test_small_timm_models_at_32x32(name, input_size):
    model = create_model(name, num_classes=10, in_chans=1, input_size=input_size)
    assert model.diffq_spec["source"] == "timm"
    assert _forward(model).shape == (2, 10)


def test_spec_rebuilds_the_same_architecture():
    model = create_model("test_vit", num_classes=5, in_chans=3, input_size=32)
    again = create_model(**model.diffq_spec)
    assert {k: v.shape for k, v in model.state_dict().items()} == \
        {k: v.shape for k, v in again.state_dict().items()}


def test_prefixes_pick_the_source():
    assert create_model("tv:resnet18").diffq_spec["source"] == "torchvision"
    spec = create_model("timm:resnet18").diffq_spec
    assert (spec["name"], spec["source"]) == ("resnet18", "timm")
    with pytest.raises(InputError, match="conflicts"):
        create_model("tv:resnet18", source="timm")
    with pytest.raises(InputError, match="unknown model source"):
        create_model("resnet18", source="hub")


def test_unknown_name_suggests_close_ones():
    with pytest.raises(InputError) as err:
        create_model("resnt18")
    message = str(err.value)
    assert message.startswith("unknown model 'resnt18'; did you mean: resnet18")
    assert "resnet18d" in message and "\n" not in message
    with pytest.raises(InputError, match="in torchvision"):
        create_model("deit_tiny_patch16_224", source="torchvision")


def test_list_models_filters_and_labels_sources():
    models = dict(list_models("resnet1*"))
    assert models["resnet18"] == "torchvision" and models["resnet18d"] == "timm"
    assert all(name.startswith("resnet1") for name in models)
    assert set(dict(list_models(source="torchvision")).values()) == {"torchvision"}
    assert ("deit_tiny_patch16_224", "timm") in list_models("deit_*")


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_weights_round_trip(tmp_path, suffix):
    source = create_model("test_resnet", num_classes=10, in_chans=1)
    path = tmp_path / f"w{suffix}"
    if suffix == ".pt":  # a training checkpoint, saved from a DDP-wrapped model
        state = {f"module.{k}": v for k, v in source.state_dict().items()}
        torch.save({"state_dict": state, "epoch": 3}, path)
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    loaded = create_model("test_resnet", num_classes=10, in_chans=1, weights=path)
    assert loaded.diffq_notes == []
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_head_reinitialised_and_first_conv_adapted(tmp_path):
    imagenet = create_model("resnet18", num_classes=1000, in_chans=3)
    torch.save(imagenet.state_dict(), tmp_path / "r18.pth")
    model = create_model("resnet18", num_classes=10, in_chans=1, weights=tmp_path / "r18.pth")
    assert "classifier fc re-initialised: checkpoint has 1000 classes, model 10" in \
        model.diffq_notes
    assert any(note.startswith("first conv conv1 adapted") for note in model.diffq_notes)
    torch.testing.assert_close(model.conv1.weight, imagenet.conv1.weight.sum(1, keepdim=True))
    assert torch.equal(model.layer1[0].conv1.weight, imagenet.layer1[0].conv1.weight)
    assert model.fc.weight.shape == (10, 512)
    assert _forward(model).shape == (2, 10)


def test_load_weights_errors(tmp_path):
    model = create_model("test_resnet", num_classes=10, in_chans=1)
    with pytest.raises(InputError, match="not found"):
        load_weights(model, tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"\x00not a checkpoint")
    with pytest.raises(InputError, match="could not read weights") as err:
        load_weights(model, tmp_path / "junk.pt")
    assert "\n" not in str(err.value)
    state = model.state_dict()
    torch.save({**state, "extra.weight": torch.zeros(1)}, tmp_path / "extra.pt")
    with pytest.raises(InputError, match="unexpected extra.weight"):
        load_weights(model, tmp_path / "extra.pt")
    key = next(k for k in state if k.endswith("weight") and state[k].ndim == 4
               and not k.startswith("conv1"))
    torch.save({**state, key: torch.zeros(1, 1, 1, 1)}, tmp_path / "shape.pt")
    with pytest.raises(InputError, match=f"{key} is"):
        load_weights(model, tmp_path / "shape.pt")
    torch.save({k: v for k, v in state.items() if k != key}, tmp_path / "missing.pt")
    with pytest.raises(InputError, match=f"missing {key}"):
        load_weights(model, tmp_path / "missing.pt")


def test_torchvision_pretrained_offline_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no cached weights

    def offline(*args, **kwargs):
        raise URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(InputError) as err:
        create_model("resnet18", pretrained=True)
    assert str(err.value) == OFFLINE.format("resnet18")


def test_timm_pretrained_offline_is_one_line(monkeypatch):
    import huggingface_hub.constants as hub_constants
    import timm.models._builder as builder

    import diffq_cli.models.factory as models

    seen = []

    def offline(*args, **kwargs):
        seen.append(hub_constants.HF_HUB_OFFLINE)
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(models, "_hub_reachable", lambda: False)  # no real probe
    monkeypatch.setattr(builder, "load_state_dict_from_hf", offline)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    env = dict(os.environ)
    with pytest.raises(InputError) as err:
        create_model("test_resnet", pretrained=True)
    assert str(err.value) == OFFLINE.format("test_resnet")
    # Offline for the call only: the hub client and the environment are left as they were.
    assert seen == [True]
    assert hub_constants.HF_HUB_OFFLINE is False and dict(os.environ) == env


def test_torchvision_pretrained_grayscale_sums_rgb_kernels(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    reference = create_model("resnet18", num_classes=1000)

    def fake_download(url, dst, *args, **kwargs):  # stands in for the network
        torch.save(reference.state_dict(), dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    model = create_model("resnet18", pretrained=True, num_classes=10, in_chans=1)
    torch.testing.assert_close(model.conv1.weight, reference.conv1.weight.sum(1, keepdim=True))
    assert torch.equal(model.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    assert model.fc.out_features == 10
    gray = torch.rand(1, 1, 32, 32)  # a gray image: same features as its RGB copy
    reference.eval(), model.eval()
    with torch.no_grad():
        expected = reference.layer1(reference.maxpool(reference.relu(reference.bn1(
            reference.conv1(gray.expand(1, 3, 32, 32))))))
        got = model.layer1(model.maxpool(model.relu(model.bn1(model.conv1(gray)))))
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_timm_pretrained_offline_fails_fast(monkeypatch):
    """No hub: the hub client goes offline mode, so the error comes at once, not after retries."""
    import huggingface_hub.constants as hub_constants

    from diffq_cli.models import factory as models
    monkeypatch.setattr(models, "_hub_reachable", lambda *a, **k: False)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HOME", "/nonexistent-diffq-test-cache")
    with pytest.raises(InputError, match="--weights"):
        models.create_model("resnet10t", source="timm", num_classes=10, in_chans=1, pretrained=True)
    assert hub_constants.HF_HUB_OFFLINE is False  # offline for that call only: restored
