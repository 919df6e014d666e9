"""Verification: the compiled model against the original, on seeded random inputs.

The reference is onnxruntime for ONNX input and the exported torch program for torch
input. On a mismatch, ``first_divergence`` compiles a debug build that also returns the
output of every sparse op and compares each, in graph order, with onnxruntime on the
captured graph, to name the first layer whose output diverges.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass
class OutputCheck:
    name: str
    max_abs_err: float
    max_rel_err: float
    ok: bool


@dataclass
class Verification:
    reference: str  # "onnxruntime" | "torch"
    rtol: float
    atol: float
    seed: int
    outputs: list[OutputCheck] = field(default_factory=list)
    first_divergence: str | None = None

    @property
    def ok(self) -> bool:
        return all(o.ok for o in self.outputs)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = self.ok
        return d

    def summary(self) -> str:
        worst = max(self.outputs, key=lambda o: o.max_abs_err)
        status = "passed" if self.ok else "FAILED"
        return (f"verification {status} against {self.reference} (rtol {self.rtol:g}, atol "
                f"{self.atol:g}, seed {self.seed}): max abs error {worst.max_abs_err:.2e} "
                f"on '{worst.name}'")


def random_inputs(specs: list[dict[str, Any]], seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s["shape"]).astype(s["dtype"]) for s in specs]


def onnxruntime_outputs(proto, inputs: dict[str, np.ndarray], names: list[str] | None = None):
    import onnx
    import onnxruntime as ort

    if names:
        proto = onnx.ModelProto.FromString(proto.SerializeToString())
        have = {o.name for o in proto.graph.output}
        for n in names:
            if n not in have:
                proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(n))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    wanted = names or [o.name for o in proto.graph.output]
    return dict(zip(wanted, sess.run(wanted, inputs)))


def torch_outputs(module, inputs: list[np.ndarray]) -> list[np.ndarray]:
    import torch

    with torch.no_grad():
        out = module(*[torch.from_numpy(x) for x in inputs])
    if isinstance(out, torch.Tensor):
        out = [out]
    flat = []
    for o in out:
        flat.extend(o if isinstance(o, (list, tuple)) else [o])
    return [o.detach().numpy() for o in flat]


def compare(name: str, got: np.ndarray, want: np.ndarray, rtol: float, atol: float) -> OutputCheck:
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    if got.shape != want.shape:
        return OutputCheck(name, float("inf"), float("inf"), False)
    with np.errstate(invalid="ignore"):
        diff = np.abs(got - want)
    # NaN matches NaN and an infinity matches the same infinity (diff is NaN or 0 there)
    same_special = (np.isnan(got) & np.isnan(want)) | (np.isinf(want) & (got == want))
    close = (diff <= atol + rtol * np.abs(want)) | same_special
    ok = bool(np.all(close))
    diff = np.where(same_special, 0.0, diff)
    with np.errstate(invalid="ignore"):
        rel = diff / np.maximum(np.abs(want), 1e-12)
    finite = np.isfinite(diff)
    return OutputCheck(name, float(diff[finite].max(initial=0.0)), float(rel[finite].max(initial=0.0)), ok)


def check(cm, captured, rtol: float, atol: float, seed: int) -> Verification:
    inputs = random_inputs(cm.inputs, seed)
    got = cm.run(*inputs)
    if captured.kind == "torch":
        ref = torch_outputs(captured.reference, inputs)
        kind = "torch"
    else:
        names = [o["name"] for o in cm.outputs]
        by_name = onnxruntime_outputs(captured.reference, {s["name"]: x for s, x in zip(cm.inputs, inputs)})
        ref = [by_name[n] for n in names]
        kind = "onnxruntime"
    v = Verification(kind, rtol, atol, seed)
    if len(ref) != len(got):
        v.outputs.append(OutputCheck("<outputs>", float("inf"), float("inf"), False))
        return v
    for spec, g, r in zip(cm.outputs, got, ref):
        v.outputs.append(compare(spec["name"], g, r, rtol, atol))
    return v


def first_divergence(debug_outputs: dict[str, np.ndarray], layers: list[tuple[str, str, str]],
                     captured, inputs: dict[str, np.ndarray], rtol: float, atol: float) -> str | None:
    """``layers``: (value name, entry, layout) of each sparse op in graph order."""
    names = [v for v, _, _ in layers if v in debug_outputs]
    if not names:
        return None
    ref = onnxruntime_outputs(captured.onnx_proto, inputs, names)
    for value, entry, layout in layers:
        if value not in debug_outputs or value not in ref:
            continue
        c = compare(value, debug_outputs[value], ref[value], rtol, atol)
        if not c.ok:
            return (f"layer '{entry}' ({layout}) output '{value}' diverges first: max abs "
                    f"error {c.max_abs_err:.3g}")
    return None
