"""The Python API: ``sparsec.compile``, ``sparsec.inspect``, ``sparsec.load``.

compile = capture -> passes (Plan) -> target build -> artifact files in a private staging
directory -> verification. Nothing is written where the user asked until ``save``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from sparsec import __version__, frontend, verify
from sparsec.errors import CompileError, SparsecError, VerificationError
from sparsec.options import CompileOptions
from sparsec.plan import Plan
from sparsec.progress import Stages
from sparsec.runtime import CompiledModel, load  # noqa: F401 - re-exported
from sparsec.scratch import scratch_dir


def _options(options: CompileOptions | None, kw: dict[str, Any]) -> CompileOptions:
    if options is not None and kw:
        raise TypeError("pass either options=CompileOptions(...) or keyword options, not both")
    if options is not None:
        return options
    if "layout" in kw:  # convenience: layout="csr" or layout={"fc1": "bsr4x4"}
        lay = kw.pop("layout")
        kw["layouts"] = {"*": lay} if isinstance(lay, str) else dict(lay)
    if "input_shapes" in kw:
        kw["input_shapes"] = {k: tuple(v) for k, v in kw["input_shapes"].items()}
    return CompileOptions(**kw)


def inspect(source: Any, *, example_inputs: tuple | None = None, options: CompileOptions | None = None,
            **kw: Any) -> tuple[str, Plan]:
    """Analyse without compiling: (model name, Plan) as ``sparsec inspect`` reports it."""
    from sparsec.passes import pipeline
    from sparsec.targets import registry

    opts = _options(options, kw)
    target = registry.get(opts.target)
    captured = frontend.load(source, opts.input_shapes, example_inputs)
    _, plan = pipeline.analyze(captured.model, opts, target.spec)
    return captured.name, plan


def compile(source: Any, *, example_inputs: tuple | None = None,  # noqa: A001 - the API's name
            options: CompileOptions | None = None, **kw: Any) -> CompiledModel:
    """Compile an ONNX file / ModelProto, torch module (with ``example_inputs``),
    ExportedProgram or ``.pt2`` file. Keyword options are those of ``CompileOptions``
    (``target``, ``layout``/``layouts``, ``input_shapes``, ``verify``, ``rtol``, ``atol``...)."""
    from safetensors.numpy import save_file

    from sparsec.passes import pipeline
    from sparsec.targets import registry

    opts = _options(options, kw)
    target = registry.get(opts.target)
    target.check_toolchain()
    stages = Stages(["capture", "passes", "codegen", "package", "verify"], opts.progress)
    try:
        # The staging directory becomes the CompiledModel's (removed when it is collected)
        # or, if anything fails or is interrupted, is removed here.
        with scratch_dir("sparsec-build-") as staging:
            t0 = time.perf_counter()
            stages.step("capture")
            captured = frontend.load(source, opts.input_shapes, example_inputs)
            target.check_ops(captured.onnx_proto)
            stages.done("capture")

            stages.step("passes")
            model, plan = pipeline.run(captured.model, opts, target.spec)
            stages.done("passes")

            stages.step(f"codegen ({opts.target})")
            host = target.host()
            built = _build(target, model, host)
            stages.done("codegen")

            stages.step("package")
            lib = staging / target.library_name
            target.export(built, lib)
            weights = staging / "weights.safetensors"
            save_file({k: np.ascontiguousarray(v) for k, v in built.params.items()}, str(weights))
            manifest = _manifest(captured, plan, built, opts, host, target.library_name, t0)
            runner = target.load(lib)
            files = {target.library_name: lib, "weights.safetensors": weights}
            cm = CompiledModel(manifest, runner, files, list(built.params.values()),
                               staging=staging)
            stages.done("package")

            if opts.verify:
                stages.step("verify")
                result = verify.check(cm, captured, opts.rtol, opts.atol, opts.seed)
                if not result.ok:
                    result.first_divergence = _diagnose(target, model, host, plan, captured,
                                                        cm, opts)
                    raise VerificationError(result.summary() + (
                        f"; {result.first_divergence}" if result.first_divergence else ""))
                manifest["verification"] = result.to_dict()
                stages.done("verify")
            return cm
    finally:
        stages.close()


def _build(target, model, host, extra_outputs=()):
    try:
        return target.build(model, host, extra_outputs)
    except SparsecError:
        raise
    except Exception as exc:  # noqa: BLE001 - name the stage instead of a raw traceback
        lines = [ln.strip() for ln in str(exc).splitlines() if len(ln.strip()) > 1]
        raise CompileError(f"codegen failed: {type(exc).__name__}: "
                           f"{lines[0] if lines else ''}"[:400]) from exc


def _manifest(captured, plan: Plan, built, opts: CompileOptions, host, lib_name: str, t0: float):
    import tvm

    def spec(names, shapes):
        return [{"name": n, "shape": list(s), "dtype": "float32"} for n, s in zip(names, shapes)]

    graph = captured.model.graph
    in_shapes = [tuple(int(d) for d in v.shape) for v in graph.inputs]
    out_shapes = [tuple(int(d) for d in v.shape) for v in graph.outputs]
    inputs = spec([v.name for v in graph.inputs], in_shapes)
    if len(built.input_align) == len(inputs):  # bytes of alignment the library needs
        inputs = [dict(i, align=a) for i, a in zip(inputs, built.input_align)]
    return {
        "sparsec_version": __version__,
        "tvm_version": tvm.__version__,
        "model": captured.name,
        "source": captured.kind,
        "target": opts.target,
        "host": {"mcpu": host.mcpu, "features": host.features, "vector_lanes": host.vector_lanes},
        "inputs": inputs,
        "outputs": [dict(o, fresh=f) for o, f in zip(
            spec([v.name for v in graph.outputs], out_shapes), built.fresh_outputs)],
        "params": list(built.params),
        "library": lib_name,
        "weights": "weights.safetensors",
        "plan": plan.to_dict(),
        "options": {"layouts": opts.layouts, "rtol": opts.rtol, "atol": opts.atol,
                    "seed": opts.seed},
        "compile_seconds": round(time.perf_counter() - t0, 2),
        "verification": None,
    }


def _diagnose(target, model, host, plan: Plan, captured, cm: CompiledModel, opts) -> str | None:
    """Name the first sparse layer whose output diverges (a debug build with extra outputs)."""
    from sparsec import ops

    layers = [(n.outputs[0].name, n.attributes["entry"].as_string(),
               n.attributes["layout"].as_string())
              for n in model.graph if n.domain == ops.DOMAIN]
    if not layers:
        return None
    try:
        built = _build(target, model, host, tuple(v for v, _, _ in layers))
        with scratch_dir("sparsec-debug-", keep=False) as debug_dir:
            lib = debug_dir / target.library_name
            target.export(built, lib)
            runner = target.load(lib)
            runner.set_params(list(built.params.values()))
            inputs = verify.random_inputs(cm.inputs, opts.seed)
            outs = runner(inputs)
        named = dict(zip(built.output_names, outs))
        feeds = {s["name"]: x for s, x in zip(cm.inputs, inputs)}
        return verify.first_divergence(named, layers, captured, feeds, opts.rtol, opts.atol)
    except Exception:  # noqa: BLE001 - diagnosis is best effort; the mismatch is reported anyway
        return None
