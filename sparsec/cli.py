"""The ``sparsec`` command line: inspect, compile, run, prune, demo, targets.

Errors print one line, ``sparsec: error: ...``, and exit with the error class's code (see
README "Errors and exit codes"); ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sparsec import __version__
from sparsec.errors import EXIT_INTERRUPTED, RunInputError, SparsecError, UsageError

EPILOG = """\
examples:
  sparsec inspect model.onnx                       per-layer sparsity and chosen layouts
  sparsec inspect model.onnx --json                the same as JSON
  sparsec compile model.onnx -o model.sparsec      compile for this CPU, verify, save
  sparsec compile model.onnx --input-shape x=8x512 --layout fc1=bsr4x4 -o m.sparsec
  sparsec run model.sparsec --input x=x.npy --output y.npz
  sparsec prune model.onnx --pattern 2:4 -o pruned.onnx      magnitude-prune a dense model
  sparsec demo                                     prune, compile, verify, time vs dense
"""


def _common(p: argparse.ArgumentParser, layouts: bool = True) -> None:
    p.add_argument("model", help="an ONNX file (.onnx) or a torch.export program (.pt2)")
    p.add_argument("--target", default="cpu", help="where the code runs (default: cpu; "
                   "`sparsec targets` lists them)")
    p.add_argument("--input-shape", action="append", default=[], metavar="NAME=D1xD2...",
                   help="concrete shape for an input with symbolic dims, e.g. x=8x512 (repeatable)")
    if layouts:
        p.add_argument("--layout", action="append", default=[], metavar="[OP=]LAYOUT",
                       help="force a layout for every op (csr) or one op or weight (fc1=bsr4x4); "
                       "layouts: dense, csr, bsr<r>x<c>, nm<n>:<m>, chw-spmm, bitmap "
                       "(repeatable)")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="sparsec", description="Compile pruned neural networks into fast sparse code.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    top.add_argument("--version", action="version", version=f"sparsec {__version__}")
    top.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = top.add_subparsers(dest="cmd", metavar="COMMAND")

    p = sub.add_parser("inspect", help="report each layer's sparsity and the layout sparsec picks")
    _common(p)
    p.add_argument("--json", action="store_true", help="print JSON: {model, layers: [...]}")

    p = sub.add_parser("compile", help="compile a model into an artifact directory",
                       description="Compile, verify against onnxruntime/torch, and save.")
    _common(p)
    p.add_argument("-o", "--output", required=True, help="artifact directory to write (e.g. model.sparsec)")
    p.add_argument("--no-verify", action="store_true", help="skip the check against the original model")
    p.add_argument("--rtol", type=float, default=1e-4, help="verification relative tolerance (1e-4)")
    p.add_argument("--atol", type=float, default=1e-4, help="verification absolute tolerance (1e-4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the verification inputs (0)")
    p.add_argument("--quiet", action="store_true", help="print only errors")

    p = sub.add_parser("run", help="run a compiled artifact on .npy/.npz inputs")
    p.add_argument("artifact", help="a directory written by `sparsec compile`")
    p.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy",
                   help="an input as a .npy file (repeatable), or one .npz holding all inputs")
    p.add_argument("--output", metavar="FILE.npz", help="write the outputs to this .npz")
    p.add_argument("--random", action="store_true", help="run on seeded random inputs instead")

    p = sub.add_parser("prune", help="magnitude-prune the weights of a dense ONNX model",
                       description="Prune every MatMul/Gemm/Conv constant weight (in [out, in] "
                       "orientation) by magnitude and write a new ONNX file.")
    p.add_argument("model", help="a dense ONNX file")
    p.add_argument("--pattern", required=True, metavar="PATTERN",
                   help="N:M (2:4), unstructured:S (unstructured:0.9), block:RxC:S "
                   "(block:4x4:0.8) or rows:F (rows:0.25, whole output channels)")
    p.add_argument("--layers", action="append", default=[], metavar="GLOB",
                   help="prune only layers whose node or weight name matches (repeatable)")
    p.add_argument("--global", dest="scope", action="store_const", const="global",
                   default="layer", help="one magnitude threshold across all selected layers "
                   "(unstructured and block patterns)")
    p.add_argument("-o", "--output", required=True, help="ONNX file to write")

    p = sub.add_parser("demo", help="prune a built-in model, compile, verify and time it vs dense")
    p.add_argument("--sparsity", type=float, default=0.9, help="fraction of weights pruned (0.9)")
    p.add_argument("--batch", type=int, default=1, help="batch size (1)")

    sub.add_parser("targets", help="list the compilation targets")
    return top


def _compile_options(args, **extra):
    from sparsec.options import CompileOptions, parse_input_shape, parse_layout_option

    shapes = dict(parse_input_shape(s) for s in args.input_shape)
    layouts = dict(parse_layout_option(s) for s in getattr(args, "layout", []))
    return CompileOptions(target=args.target, input_shapes=shapes, layouts=layouts, **extra)


def cmd_inspect(args) -> int:
    from sparsec import api, report

    name, plan = api.inspect(args.model, options=_compile_options(args))
    print(report.as_json(name, plan) if args.json else report.table(name, plan))
    return 0


def cmd_compile(args) -> int:
    from sparsec import api, report

    opts = _compile_options(args, verify=not args.no_verify, rtol=args.rtol, atol=args.atol,
                            seed=args.seed, progress=sys.stderr.isatty() and not args.quiet)
    cm = api.compile(args.model, options=opts)
    out = cm.save(args.output)
    if not args.quiet:
        print(report.table(cm.manifest["model"], cm.plan))
        v = cm.verification
        if v:
            worst = max(v["outputs"], key=lambda o: o["max_abs_err"])
            print(f"verification passed against {v['reference']} (rtol {v['rtol']:g}, atol "
                  f"{v['atol']:g}): max abs error {worst['max_abs_err']:.2e}")
        else:
            print("verification skipped (--no-verify)")
        print(f"wrote {out} in {cm.manifest['compile_seconds']:.1f} s")
    return 0


def _read_inputs(cm, specs: list[str]) -> dict:
    import numpy as np

    feeds = {}
    for text in specs:
        name, sep, path = text.partition("=")
        if not sep:
            name, path = "", text
        p = Path(path)
        if not p.is_file():
            raise UsageError(f"input file '{path}' does not exist")
        try:
            data = np.load(p, allow_pickle=False)
        except Exception:  # noqa: BLE001
            raise RunInputError(f"'{path}' is not a readable .npy/.npz file") from None
        if isinstance(data, np.lib.npyio.NpzFile):
            feeds.update({k: data[k] for k in data.files})
        elif not name:
            if len(cm.inputs) != 1:
                raise UsageError(f"give NAME={path}; the model has inputs "
                                 f"{', '.join(i['name'] for i in cm.inputs)}")
            feeds[cm.inputs[0]["name"]] = data
        else:
            feeds[name] = data
    return feeds


def cmd_run(args) -> int:
    import numpy as np

    from sparsec import runtime, verify

    cm = runtime.load(args.artifact)
    if args.random:
        outs = cm.run(*verify.random_inputs(cm.inputs, 0))
    else:
        if not args.input:
            raise UsageError("give --input NAME=FILE.npy for each input (or --random)")
        outs = cm.run(**_read_inputs(cm, args.input))
    names = [o["name"] for o in cm.outputs]
    if args.output:
        tmp = Path(args.output + ".tmp.npz")
        np.savez(tmp, **dict(zip(names, outs)))
        tmp.replace(args.output)
        print(f"wrote {args.output}: " + ", ".join(f"{n} {list(o.shape)}" for n, o in zip(names, outs)))
    else:
        for n, o in zip(names, outs):
            print(f"{n}: shape {list(o.shape)} mean {o.mean():.6g} std {o.std():.6g}")
    return 0


def cmd_prune(args) -> int:
    from sparsec import prune_onnx

    results = prune_onnx.prune_file(args.model, args.output, args.pattern, layers=args.layers,
                                    scope=args.scope)
    for r in results:
        print(r.line())
    done = [r for r in results if not r.skipped]
    total = sum(r.shape[0] * r.shape[1] for r in done)
    kept = sum(r.density_after * r.shape[0] * r.shape[1] for r in done)
    print(f"wrote {args.output}: {len(done)} layer(s) pruned to {args.pattern}, "
          f"density {kept / max(total, 1):.3f} over them")
    return 0


def cmd_demo(args) -> int:
    from sparsec import demo

    return demo.main(sparsity=args.sparsity, batch=args.batch)


def cmd_targets(args) -> int:
    from sparsec.targets import registry

    for name, desc in registry.describe():
        print(f"{name:10s} {desc}")
    return 0


COMMANDS = {"inspect": cmd_inspect, "compile": cmd_compile, "run": cmd_run, "prune": cmd_prune,
            "demo": cmd_demo, "targets": cmd_targets}


def _one_line_warnings() -> None:
    """Warnings as ``sparsec: warning: ...`` lines, not Python's two-line source dump."""
    import warnings

    from sparsec.errors import SparsecWarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, SparsecWarning):
            print(f"sparsec: warning: {message}", file=sys.stderr)

    warnings.showwarning = show
    warnings.simplefilter("always", SparsecWarning)


def _terminate_as_interrupt() -> None:
    """SIGTERM unwinds like Ctrl-C, so staging directories are removed on the way out."""
    import signal

    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        pass


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if not args.cmd:
        parser().print_help()
        return 2
    _one_line_warnings()
    _terminate_as_interrupt()
    try:
        return COMMANDS[args.cmd](args)
    except SparsecError as exc:
        if args.debug:
            raise
        print(f"sparsec: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("sparsec: interrupted; nothing was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - never a traceback without --debug
        if args.debug:
            raise
        first = str(exc).strip().splitlines()
        print(f"sparsec: internal error: {type(exc).__name__}: {first[0][:300] if first else ''} "
              "(run with --debug for the traceback, and please report it)", file=sys.stderr)
        return 70


if __name__ == "__main__":
    sys.exit(main())
