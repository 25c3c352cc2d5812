"""Quick start with the Python API: train a CNN on digits, prune it iteratively, evaluate, export to ONNX.

    python examples/quickstart.py            # about 10 s of CPU time on one core, most of it imports and export
    python examples/quickstart.py --quick    # 2 training epochs instead of 20 (used by the tests); about as long

(measured with `time` on a shared 2-core machine: 10.2 s user time for either form)
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import slimkit as sk
from slimkit.config.recipe import DataConfig, ModelConfig
from slimkit.data import load_data
from slimkit.models import build_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default="out/quickstart")
    args = ap.parse_args()
    epochs = 2 if args.quick else 20

    data = load_data(DataConfig(name="digits"))
    model = build_model(ModelConfig(arch="cnn-small"), input_shape=data.input_shape, num_classes=data.num_classes)
    sk.finetune(model, data.train, sk.FinetuneConfig(epochs=epochs, lr=1e-2), val_loader=data.val)
    baseline = copy.deepcopy(model)

    sk.prune_(model, sk.MagnitudePruneConfig(sparsity=0.8, steps=4, skip=["features.0.*"],
                                             finetune=sk.FinetuneConfig(epochs=max(1, epochs // 6), lr=3e-3)),
              train_loader=data.train, val_loader=data.val)

    out = Path(args.out)
    before = sk.evaluate(baseline, data.test, example_inputs=data.example_inputs)
    after = sk.evaluate(model, data.test, example_inputs=data.example_inputs)
    exported = sk.export(model, out / "model.onnx", example_inputs=data.example_inputs)
    saved = sk.export(model, out / "checkpoint", example_inputs=data.example_inputs)
    print(f"accuracy {before['accuracy']:.4f} -> {after['accuracy']:.4f}; sparsity {after['sparsity']:.3f}")
    print(f"ONNX {exported['artifact']} ({exported['size_bytes']} bytes, parity max |diff| "
          f"{exported['parity']['max_abs_diff']:.2e}); compact checkpoint {saved['size_bytes']} bytes")


if __name__ == "__main__":
    main()
