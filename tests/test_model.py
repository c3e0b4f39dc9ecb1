"""create_model: paper head, timm 1-channel adaptation, ImageNet sources, transfer, extractor freezing."""

import pickle

import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import nn

from cxrtl.checkpoint import save_checkpoint
from cxrtl.errors import CxrtlError
from cxrtl.model import WEIGHTS_ENV, CxrModel, set_scheme
from cxrtl.transfer import create_model

TINY = "test_resnet"  # ~0.4M parameters, BatchNorm, first conv "conv1.0"


def _imagenet_file(tmp_path, name=TINY, seed=0):
    """A random timm state dict (with its 1000-class classifier) saved as the user would download it."""
    torch.manual_seed(seed)
    sd = timm.create_model(name, pretrained=False).state_dict()
    path = tmp_path / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path, sd


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """No test may reach the Hugging Face Hub."""
    import huggingface_hub.constants as hf

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)


def test_head_is_linear_mish_linear_and_model_carries_classes():
    m = create_model(TINY, ["COVID", "Normal", "Other"], in_chans=3, init="none")
    assert isinstance(m, CxrModel) and m.classes == ["COVID", "Normal", "Other"]
    assert m.in_chans == 3 and m.backbone_name == TINY
    lin1, act, lin2 = m.head
    assert isinstance(lin1, nn.Linear) and isinstance(act, nn.Mish) and isinstance(lin2, nn.Linear)
    assert (lin1.in_features, lin1.out_features, lin2.out_features) == (m.backbone.num_features, 64, 3)
    assert m.backbone.num_classes == 0  # classifier removed, pooled features out
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 3)


def test_densenet121_has_paper_head_and_one_channel_stem():
    m = create_model("densenet121", ["a", "b", "c", "d"], in_chans=1, init="none")
    assert m.head[0].in_features == 1024 and m.head[2].out_features == 4
    assert m.backbone.features.conv0.weight.shape == (64, 1, 7, 7)


def test_unknown_backbone_is_one_line_error_with_suggestion():
    with pytest.raises(CxrtlError, match="unknown backbone 'densenet12'.*densenet121") as e:
        create_model("densenet12", ["a", "b"], init="none")
    assert "\n" not in str(e.value)


def test_imagenet_offline_without_file_names_the_fix():
    with pytest.raises(CxrtlError) as e:
        create_model(TINY, ["a", "b"], init="imagenet")
    msg = str(e.value)
    assert "--pretrained-file" in msg and WEIGHTS_ENV in msg and "\n" not in msg


@pytest.mark.parametrize("via_env", [False, True])
def test_imagenet_from_local_file_loads_every_backbone_tensor(tmp_path, monkeypatch, via_env):
    path, sd = _imagenet_file(tmp_path)
    if via_env:
        monkeypatch.setenv(WEIGHTS_ENV, str(path))
        m = create_model(TINY, ["a", "b"], in_chans=3, init="imagenet")
    else:
        m = create_model(TINY, ["a", "b"], in_chans=3, init="imagenet", pretrained_file=path)
    for k, v in m.backbone.state_dict().items():
        assert torch.equal(v, sd[k]), k


def test_one_channel_stem_is_sum_of_pretrained_rgb_filters(tmp_path):
    path, sd = _imagenet_file(tmp_path)
    m = create_model(TINY, ["a", "b"], in_chans=1, init="imagenet", pretrained_file=path)
    w1 = m.backbone.conv1[0].weight
    assert w1.shape[1] == 1
    torch.testing.assert_close(w1, sd["conv1.0.weight"].sum(dim=1, keepdim=True))


def test_pretrained_file_of_another_model_or_a_pickle_is_refused(tmp_path):
    other, _ = _imagenet_file(tmp_path, "test_byobnet")
    with pytest.raises(CxrtlError, match="does not fit backbone"):
        create_model(TINY, ["a", "b"], init="imagenet", pretrained_file=other)
    pkl = tmp_path / "weights.pth"
    pkl.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CxrtlError, match="never"):
        create_model(TINY, ["a", "b"], init="imagenet", pretrained_file=pkl)
    with pytest.raises(CxrtlError, match="does not exist"):
        create_model(TINY, ["a", "b"], init="imagenet", pretrained_file=tmp_path / "missing.safetensors")


def _source_checkpoint(tmp_path, in_chans=3):
    torch.manual_seed(1)
    src = create_model(TINY, ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"], in_chans, init="none")
    for p in src.parameters():  # make the weights recognisable
        p.data.add_(0.01)
    save_checkpoint(tmp_path / "src", src, {"epoch": 3})
    return src


@pytest.mark.parametrize("keep_hidden", [False, True])
def test_transfer_takes_backbone_and_resets_head(tmp_path, keep_hidden):
    src = _source_checkpoint(tmp_path)
    torch.manual_seed(5)
    m = create_model(
        None, ["NORMAL", "PNEUMONIA"], 3, init=str(tmp_path / "src.safetensors"), keep_hidden=keep_hidden
    )
    assert m.classes == ["NORMAL", "PNEUMONIA"] and m.backbone_name == TINY
    for k, v in m.backbone.state_dict().items():
        assert torch.equal(v, src.backbone.state_dict()[k]), k
    assert m.head[2].out_features == 2
    assert torch.equal(m.head[0].weight, src.head[0].weight) == keep_hidden
    assert not torch.equal(m.head[2].weight[:2], src.head[2].weight[:2])


def test_transfer_refuses_other_backbone_or_channels(tmp_path):
    _source_checkpoint(tmp_path)
    with pytest.raises(CxrtlError, match="holds backbone"):
        create_model("resnet18", ["a", "b"], 3, init=str(tmp_path / "src.json"))
    with pytest.raises(CxrtlError, match="--channels 3"):
        create_model(None, ["a", "b"], 1, init=str(tmp_path / "src.safetensors"))
    with pytest.raises(CxrtlError, match="keep-hidden"):
        create_model(TINY, ["a", "b"], 3, init="none", keep_hidden=True)


def test_extractor_freezes_parameters_and_batchnorm_statistics():
    torch.manual_seed(0)
    m = set_scheme(create_model(TINY, ["a", "b"], 3, init="none"), "extractor")
    bns = [mod for mod in m.backbone.modules() if isinstance(mod, nn.BatchNorm2d)]
    before = [bn.running_mean.clone() for bn in bns]
    weights = [p.clone() for p in m.backbone.parameters()]
    head_before = m.head[0].weight.clone()
    opt = torch.optim.NAdam([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    m.train()
    assert not m.backbone.training and m.head.training
    for _ in range(2):
        loss = nn.functional.cross_entropy(m(torch.randn(4, 3, 32, 32) * 3 + 1), torch.tensor([0, 1, 0, 1]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(torch.equal(b, bn.running_mean) for b, bn in zip(before, bns))
    assert all(torch.equal(w, p) for w, p in zip(weights, m.backbone.parameters()))
    assert not torch.equal(head_before, m.head[0].weight)


def test_finetune_trains_everything_and_bad_scheme_is_refused():
    m = set_scheme(create_model(TINY, ["a", "b"], 3, init="none"), "finetune")
    assert all(p.requires_grad for p in m.parameters())
    with pytest.raises(CxrtlError):
        set_scheme(m, "frozen")


def test_unreachable_hub_fails_fast_or_uses_the_local_hub_cache(tmp_path, monkeypatch):
    """Online-looking but unplugged machine: no minute of retries; weights in the Hub's cache still work."""
    import huggingface_hub

    from cxrtl import model as model_mod

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(model_mod, "_hub_reachable", lambda timeout=3.0: False)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    with pytest.raises(CxrtlError, match="unreachable.*--pretrained-file") as e:
        create_model("densenet121", ["a", "b"], init="imagenet")
    assert "\n" not in str(e.value)

    path, sd = _imagenet_file(tmp_path)  # stands in for the file the Hub cached on an earlier, online run
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: str(path))
    m = create_model(TINY, ["a", "b"], init="imagenet")
    for k, v in m.backbone.state_dict().items():
        assert torch.equal(v, sd[k]), k


def test_model_module_leaves_checkpoint_init_to_transfer(tmp_path):
    from cxrtl import model as model_mod

    _source_checkpoint(tmp_path)
    with pytest.raises(CxrtlError, match="use cxrtl.create_model"):
        model_mod.new_model(None, ["a", "b"], 3, init=str(tmp_path / "src.safetensors"))
    assert not hasattr(
        model_mod, "create_model"
    )  # one name, one idea: the public factory is cxrtl.create_model
