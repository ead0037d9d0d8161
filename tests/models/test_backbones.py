"""Backbones by name (random init, never downloaded), ``features``/``head``, local weights."""

from __future__ import annotations

import socket

import pytest
import torch

from fairbench import Classifier, FairbenchError, ParamError, UnknownNameError, create_backbone


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to open a connection (a weights download) fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("a backbone tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


CASES = [
    ("smallcnn", 16, {"width": 4}),
    ("resnet18", 32, {}),
    ("timm:resnet10t", 32, {}),
    ("tv:resnet18", 32, {}),
]


@pytest.mark.parametrize("name,size,params", CASES)
def test_create_and_features_head_compose(name, size, params):
    torch.manual_seed(0)
    model = create_backbone(name, num_classes=3, image_size=size, **params)
    assert isinstance(model, Classifier)
    model.eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        z = model.features(x)
        out = model(x)
        assert z.shape == (2, model.num_features)
        assert out.shape == (2, 3)
        assert torch.allclose(model.head(z), out, atol=1e-5)
    if name == "smallcnn":  # a gradient reaches the first layer (skipped for the big ones)
        model.train()
        model(x).sum().backward()
        first = next(p for p in model.parameters() if p.requires_grad)
        assert first.grad is not None and first.grad.abs().sum() > 0


def test_random_init_is_seeded_and_not_pretrained():
    torch.manual_seed(1)
    a = create_backbone("resnet18", num_classes=2, image_size=32)
    torch.manual_seed(1)
    b = create_backbone("resnet18", num_classes=2, image_size=32)
    torch.manual_seed(2)
    c = create_backbone("resnet18", num_classes=2, image_size=32)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["body.conv1.weight"], sc["body.conv1.weight"])


def test_vgg11_adapts_to_image_size():
    m = create_backbone("vgg11", num_classes=2, image_size=64).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out = m(x)
        assert out.shape == (1, 2)
        assert torch.allclose(m.head(m.features(x)), out, atol=1e-5)
    # no adaptive pooling up to 7x7: the first linear layer takes 512 * 2 * 2 features
    linears = [mod for mod in m.body.modules() if isinstance(mod, torch.nn.Linear)]
    assert linears[0].in_features == 512 * 2 * 2
    assert not any(isinstance(mod, torch.nn.AdaptiveAvgPool2d) for mod in m.modules())


def test_local_weights_round_trip(tmp_path):
    torch.manual_seed(0)
    src = create_backbone("smallcnn", num_classes=3, image_size=16, width=4)
    path = tmp_path / "w.pt"
    torch.save(src.state_dict(), path)
    torch.manual_seed(99)
    dst = create_backbone("smallcnn", num_classes=3, image_size=16, width=4, weights=str(path))
    s, d = src.state_dict(), dst.state_dict()
    assert all(torch.equal(s[k], d[k]) for k in s)
    # a {"state_dict": ...} checkpoint and a body-only checkpoint (classifier stays random)
    torch.save({"state_dict": src.state_dict()}, tmp_path / "wrapped.pt")
    w = create_backbone("smallcnn", num_classes=3, image_size=16, width=4,
                        weights=tmp_path / "wrapped.pt")
    assert torch.equal(w.state_dict()["body.0.weight"], s["body.0.weight"])
    torch.save(src.body.state_dict(), tmp_path / "body.pt")
    torch.manual_seed(5)
    other_head = create_backbone("smallcnn", num_classes=5, image_size=16, width=4,
                                 weights=tmp_path / "body.pt")
    assert torch.equal(other_head.body[0].weight, src.body[0].weight)
    assert other_head.classifier.out_features == 5


def test_weights_errors(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(FairbenchError) as exc:
        create_backbone("smallcnn", num_classes=3, image_size=16, weights=str(missing))
    assert "nope.pt" in str(exc.value) and "does not exist" in str(exc.value)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(FairbenchError, match="garbage.pt"):
        create_backbone("smallcnn", num_classes=3, image_size=16, weights=garbage)
    other = tmp_path / "other.pt"
    torch.save({"x.y": torch.zeros(3)}, other)
    with pytest.raises(FairbenchError, match="matches no parameter"):
        create_backbone("smallcnn", num_classes=3, image_size=16, weights=other)


def test_unknown_backbones():
    with pytest.raises(UnknownNameError, match="smallcnn"):
        create_backbone("smallcn", num_classes=2, image_size=16)
    with pytest.raises(UnknownNameError, match="timm model"):
        create_backbone("timm:not_a_model_xyz", num_classes=2, image_size=16)
    with pytest.raises(UnknownNameError, match="torchvision model"):
        create_backbone("tv:not_a_model_xyz", num_classes=2, image_size=16)
    with pytest.raises(ParamError, match="vgg11"):
        create_backbone("vgg11", num_classes=2, image_size=16, not_a_kwarg=1)
    # smallcnn pools four times: below 16 px a clear error instead of a torch crash
    with pytest.raises(ParamError, match="16 or more"):
        create_backbone("smallcnn", num_classes=2, image_size=8)
