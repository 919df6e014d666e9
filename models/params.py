"""Seeded weights and inputs of the example models, shared by the ONNX and torch versions.

Weights are in torch orientation and carry torch parameter names (``fc1.weight`` is
``[out, in]``, ``blocks.0.pw.weight`` is ``[O, C, kh, kw]``); the ONNX builders store
MatMul weights transposed under the same name. Pruning uses ``sparsec.models.prune``, so
each planted pattern is exact. ``planted`` maps weight names to the pattern the
examples promise: ``{"density", "nm", "block", "zero_rows"}`` in ``[out, in]`` orientation.
``nm``/``block`` name a pattern that was planted on purpose (None: none planted; an
analyzer may still find a loose one in random zeros).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sparsec.models import prune


@dataclass
class ExampleParams:
    params: dict[str, np.ndarray]  # torch name -> float32 array, torch orientation
    inputs: dict[str, np.ndarray]  # graph input name -> float32 array
    planted: dict[str, dict]  # weight name -> {"density", "nm", "block", "zero_rows"}


def planted(density: float, nm=None, block=None, zero_rows: int = 0) -> dict:
    return {
        "density": round(float(density), 6),
        "nm": None if nm is None else list(nm),
        "block": None if block is None else list(block),
        "zero_rows": int(zero_rows),
    }


DENSE = planted(1.0)


def _f32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


def _weight(rng: np.random.Generator, shape: tuple[int, ...], density: float = 1.0):
    """He-style init, scaled up by the kept fraction so pruned layers keep their gain."""
    fan_in = int(np.prod(shape[1:]))
    return rng.standard_normal(shape) * np.sqrt(1.0 / (fan_in * density))


def _bias(rng: np.random.Generator, n: int) -> np.ndarray:
    return _f32(0.1 * rng.standard_normal(n))


def _batchnorm(rng: np.random.Generator, prefix: str, c: int) -> dict[str, np.ndarray]:
    """Non-trivial affine parameters and running statistics."""
    return {
        f"{prefix}.weight": _f32(rng.uniform(0.5, 1.5, c)),
        f"{prefix}.bias": _f32(0.1 * rng.standard_normal(c)),
        f"{prefix}.running_mean": _f32(0.2 * rng.standard_normal(c)),
        f"{prefix}.running_var": _f32(rng.uniform(0.5, 2.0, c)),
    }


def mlp_2to4(seed: int = 0) -> ExampleParams:
    """fc1 [512, 256] and fc2 [512, 512] at 2:4, fc3 [10, 512] dense."""
    rng = np.random.default_rng(seed)
    p = {
        "fc1.weight": _f32(prune.n_m(_weight(rng, (512, 256), 0.5), 2, 4)),
        "fc1.bias": _bias(rng, 512),
        "fc2.weight": _f32(prune.n_m(_weight(rng, (512, 512), 0.5), 2, 4)),
        "fc2.bias": _bias(rng, 512),
        "fc3.weight": _f32(_weight(rng, (10, 512))),
        "fc3.bias": _bias(rng, 10),
    }
    inputs = {"x": _f32(rng.standard_normal((8, 256)))}
    nm24 = planted(0.5, nm=(2, 4))
    return ExampleParams(p, inputs, {"fc1.weight": nm24, "fc2.weight": nm24, "fc3.weight": DENSE})


# (name, channels in, channels out, dw stride, with BatchNorm, 1x1 sparsity)
MOBILENET_BLOCKS = (
    ("blocks.0", 16, 64, 1, True, 0.88),
    ("blocks.1", 64, 128, 2, False, 0.90),
    ("blocks.2", 128, 128, 1, True, 0.85),
)


def mobilenet_like(seed: int = 1) -> ExampleParams:
    """Dense stem, three depthwise + sparse 1x1 blocks (88%, 90%, 85%), dense classifier.

    Blocks with BatchNorm have bias-free convs; ``blocks.1`` has no BatchNorm and biases."""
    rng = np.random.default_rng(seed)
    p = {"stem.conv.weight": _f32(_weight(rng, (16, 3, 3, 3)))}
    p |= _batchnorm(rng, "stem.bn", 16)
    want = {"stem.conv.weight": DENSE}
    for name, cin, cout, _, bn, sparsity in MOBILENET_BLOCKS:
        p[f"{name}.dw.weight"] = _f32(_weight(rng, (cin, 1, 3, 3)))
        p |= _batchnorm(rng, f"{name}.dw_bn", cin) if bn else {f"{name}.dw.bias": _bias(rng, cin)}
        w = _weight(rng, (cout, cin, 1, 1), 1.0 - sparsity)
        p[f"{name}.pw.weight"] = _f32(prune.unstructured(w, sparsity, min_per_row=1))
        p |= _batchnorm(rng, f"{name}.pw_bn", cout) if bn else {f"{name}.pw.bias": _bias(rng, cout)}
        want[f"{name}.dw.weight"] = DENSE
        want[f"{name}.pw.weight"] = planted(1.0 - sparsity)
    p["classifier.weight"] = _f32(_weight(rng, (10, 128)))
    p["classifier.bias"] = _bias(rng, 10)
    want["classifier.weight"] = DENSE
    inputs = {"x": _f32(rng.standard_normal((1, 3, 64, 64)))}
    return ExampleParams(p, inputs, want)


TRANSFORMER = {"seq": 32, "hidden": 128, "heads": 4, "ffn": 512}


def transformer_block(seed: int = 2) -> ExampleParams:
    """Pre-LN block: 4x4 blocks in qkv and fc1, 16x1 blocks (16 output rows x 1 input)
    in out and fc2, each at 25% block density."""
    rng = np.random.default_rng(seed)
    h, f = TRANSFORMER["hidden"], TRANSFORMER["ffn"]
    layers = (  # (name, out, in, block [r, c] in [out, in] orientation)
        ("attn.qkv", 3 * h, h, (4, 4)),
        ("attn.out", h, h, (16, 1)),
        ("ffn.fc1", f, h, (4, 4)),
        ("ffn.fc2", h, f, (16, 1)),
    )
    p = {"ln1.weight": _f32(rng.uniform(0.5, 1.5, h)), "ln1.bias": _bias(rng, h)}
    want = {}
    for name, out, inp, (r, c) in layers:
        w = _weight(rng, (out, inp), 0.25)
        p[f"{name}.weight"] = _f32(prune.block(w, r, c, 0.75))
        p[f"{name}.bias"] = _bias(rng, out)
        want[f"{name}.weight"] = planted(0.25, block=(r, c))
        if name == "attn.out":
            p["ln2.weight"] = _f32(rng.uniform(0.5, 1.5, h))
            p["ln2.bias"] = _bias(rng, h)
    inputs = {"x": _f32(rng.standard_normal((1, TRANSFORMER["seq"], h)))}
    return ExampleParams(p, inputs, want)


def lm_head(seed: int = 3) -> ExampleParams:
    """lm_head [4096, 256] at 95% unstructured, no bias, batch 1."""
    rng = np.random.default_rng(seed)
    w = prune.unstructured(_weight(rng, (4096, 256), 0.05), 0.95, min_per_row=1)
    inputs = {"x": _f32(rng.standard_normal((1, 256)))}
    return ExampleParams({"lm_head.weight": _f32(w)}, inputs, {"lm_head.weight": planted(0.05)})


def half_zero_rows(seed: int = 4) -> ExampleParams:
    """fc1 [512, 512] with 256 whole output rows zero (their bias too, so the channels are
    exactly zero after Relu and can be removed with fc2's matching columns), fc2 [64, 512]."""
    rng = np.random.default_rng(seed)
    w1 = prune.zero_rows(_weight(rng, (512, 512)), 0.5)
    b1 = _bias(rng, 512)
    b1[~np.any(w1 != 0, axis=1)] = 0.0
    p = {
        "fc1.weight": _f32(w1),
        "fc1.bias": b1,
        "fc2.weight": _f32(_weight(rng, (64, 512), 0.5)),
        "fc2.bias": _bias(rng, 64),
    }
    inputs = {"x": _f32(rng.standard_normal((4, 512)))}
    want = {"fc1.weight": planted(0.5, zero_rows=256), "fc2.weight": DENSE}
    return ExampleParams(p, inputs, want)
