"""``sparsec demo``: prune a built-in MLP, compile it, verify it, time it against dense.

The model is a 4-layer, 1024-wide MLP with seeded weights, magnitude-pruned in code (no
download). It is compiled twice — sparse (layouts chosen by the cost model) and with
every layout forced dense — and both are timed beside onnxruntime and torch running the
same pruned weights densely, in one process, interleaved, median of many runs.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from sparsec.timing import ort_session, settle

WIDTH, DEPTH, CLASSES = 1024, 4, 10


def build_mlp(sparsity: float, batch: int, seed: int = 0):
    """ONNX MLP: (Gemm transB=1 + Relu) x DEPTH, then a dense classifier Gemm."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from sparsec.models import prune

    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "x"
    for i in range(DEPTH):
        w = (rng.standard_normal((WIDTH, WIDTH)) / np.sqrt(WIDTH)).astype(np.float32)
        w = prune.unstructured(w, sparsity, min_per_row=1) if sparsity > 0 else w
        b = (0.1 * rng.standard_normal(WIDTH)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"fc{i}.weight"), numpy_helper.from_array(b, f"fc{i}.bias")]
        nodes += [helper.make_node("Gemm", [x, f"fc{i}.weight", f"fc{i}.bias"], [f"h{i}"],
                                   name=f"fc{i}", transB=1),
                  helper.make_node("Relu", [f"h{i}"], [f"a{i}"], name=f"relu{i}")]
        x = f"a{i}"
    w = (rng.standard_normal((CLASSES, WIDTH)) / np.sqrt(WIDTH)).astype(np.float32)
    inits += [numpy_helper.from_array(w, "head.weight"),
              numpy_helper.from_array(np.zeros(CLASSES, np.float32), "head.bias")]
    nodes.append(helper.make_node("Gemm", [x, "head.weight", "head.bias"], ["logits"],
                                  name="head", transB=1))
    graph = helper.make_graph(
        nodes, "demo_mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, WIDTH])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, CLASSES])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(model)
    return model


def _median_ms(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * float(np.median(times))


def time_side_by_side(fns: dict, repeat: int = 50, rounds: int = 5) -> dict[str, float]:
    """Median ms of each callable, interleaved round by round so drift hits all alike;
    each block of calls starts after ``settle()`` (``sparsec.timing``)."""
    for fn in fns.values():
        fn()
    per: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            settle()
            fn()
            per[k].append(_median_ms(fn, max(1, repeat // rounds)))
    return {k: float(np.median(v)) for k, v in per.items()}


def main(sparsity: float = 0.9, batch: int = 1) -> int:
    import torch

    import sparsec
    from sparsec import report
    from sparsec.errors import UsageError

    if not 0 <= sparsity < 1:
        raise UsageError(f"--sparsity must be in [0, 1), got {sparsity}")
    if batch < 1:
        raise UsageError(f"--batch must be >= 1, got {batch}")
    print(f"sparsec demo: {DEPTH}-layer MLP, {WIDTH} wide, pruned to {sparsity:.0%} "
          f"unstructured, batch {batch}")
    model = build_mlp(sparsity, batch)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mlp.onnx"
        path.write_bytes(model.SerializeToString())
        t0 = time.perf_counter()
        cm = sparsec.compile(str(path), target="cpu")
        t_sparse = time.perf_counter() - t0
        dense = sparsec.compile(str(path), target="cpu", layout="dense")
        art = cm.save(Path(tmp) / "mlp.sparsec")
        cm = sparsec.load(art)  # run what was saved
        print(report.table("mlp.onnx", cm.plan))
        v = cm.verification
        worst = max(o["max_abs_err"] for o in v["outputs"])
        print(f"verified against onnxruntime: max abs error {worst:.1e} "
              f"(rtol {v['rtol']:g}, atol {v['atol']:g}); compiled in {t_sparse:.1f} s")

        x = np.random.default_rng(1).standard_normal((batch, WIDTH)).astype(np.float32)
        sess = ort_session(path)
        tm = _torch_mlp(model)
        xt = torch.from_numpy(x)
        with torch.no_grad():
            ms = time_side_by_side({
                "sparsec (sparse)": lambda: cm(x),
                "sparsec (all dense)": lambda: dense(x),
                "onnxruntime (dense)": lambda: sess.run(None, {"x": x}),
                "torch eager (dense)": lambda: tm(xt),
            })
    base = ms["onnxruntime (dense)"]
    print(f"\n{'engine':22s} {'median ms':>10s} {'vs onnxruntime':>15s}")
    for k, v in ms.items():
        print(f"{k:22s} {v:10.3f} {base / v:14.2f}x")
    return 0


def _torch_mlp(model):
    import torch
    from onnx import numpy_helper

    ws = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in model.graph.initializer}

    def run(x):
        for i in range(DEPTH):
            x = torch.relu(torch.nn.functional.linear(x, ws[f"fc{i}.weight"], ws[f"fc{i}.bias"]))
        return torch.nn.functional.linear(x, ws["head.weight"], ws["head.bias"])

    return run
