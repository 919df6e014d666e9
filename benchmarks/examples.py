"""The five example models: sparsec (chosen layouts), sparsec (every layout dense),
onnxruntime and torch, timed side by side in one process.

    python -m benchmarks.examples [--repeat 200] [--markdown]

Prints median ms per engine and the ratio to onnxruntime (> 1 means faster than
onnxruntime). Issue 3 asks the all-dense build to be within 3x of onnxruntime.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    ap.add_argument("--repeat", type=int, default=200, help="timed calls per engine (200)")
    ap.add_argument("--only", action="append", help="example name (repeatable)")
    args = ap.parse_args(argv)

    import torch

    import sparsec
    from sparsec.demo import time_side_by_side
    from sparsec.timing import ort_session
    from sparsec.models import examples, torch_examples

    rows = []
    for name, make in examples.ALL.items():
        if args.only and name not in args.only:
            continue
        ex = make()
        t0 = time.perf_counter()
        cm = sparsec.compile(ex.onnx_model)
        t_compile = time.perf_counter() - t0
        dense = sparsec.compile(ex.onnx_model, layout="dense")
        sess = ort_session(ex.onnx_model)
        feeds = ex.inputs
        engines = {
            "sparsec": lambda: cm(**feeds),
            "sparsec-dense": lambda: dense(**feeds),
            "onnxruntime": lambda: sess.run(None, feeds),
        }
        tm = getattr(torch_examples, name, None)
        if tm is not None:
            module = tm()
            xs = module.example_inputs()

            def run_torch(module=module, xs=xs):
                with torch.no_grad():
                    module(*xs)

            engines["torch"] = run_torch
        ms = time_side_by_side(engines, repeat=args.repeat)
        layouts = sorted({r["layout"] for r in cm.report})
        rows.append((name, ms, layouts, t_compile))

    threads = os.environ.get("TVM_NUM_THREADS", "?")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"TVM threads {threads}; median ms over {args.repeat} calls, interleaved\n")
    print("| model | sparsec | sparsec all-dense | onnxruntime | torch | sparsec vs ort | "
          "all-dense vs ort | layouts | compile s |")
    print("|---|---:|---:|---:|---:|---:|---:|---|---:|")
    for name, ms, layouts, tc in rows:
        ort_ms = ms["onnxruntime"]
        torch_ms = f"{ms['torch']:.3f}" if "torch" in ms else "-"
        print(f"| {name} | {ms['sparsec']:.3f} | {ms['sparsec-dense']:.3f} | {ort_ms:.3f} | "
              f"{torch_ms} | {ort_ms / ms['sparsec']:.2f}x | {ort_ms / ms['sparsec-dense']:.2f}x | "
              f"{', '.join(layouts)} | {tc:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
