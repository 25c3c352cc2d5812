"""Quantization passes: linear (int2..int8), logarithmic and binary quantizers; PTQ, QAT, dynamic int8,
weight-only, fp16/bf16. See docs/quantization.md.

Modules: qscheme (math), observers (calibration), fake_quant (STE/LSQ fake quantizers), modules (layer
wrappers and surgery), ptq / qat / dynamic / weight_only / precision (passes), packing (packed storage),
checkpoint (how quantized models are saved and rebuilt; imported here so its codecs are registered whenever a
quantized model exists).
"""

from slimkit.passes.quantize import checkpoint as _checkpoint  # noqa: F401  (registers the checkpoint codecs)
