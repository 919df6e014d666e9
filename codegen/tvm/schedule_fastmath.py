"""Vectorizable float32 exp / erf / sigmoid / tanh in PrimFuncs.

LLVM lowers ``T.exp`` and ``T.erf`` (and the exp inside ``T.sigmoid`` / ``T.tanh``) to
scalar libm calls, so a vectorized softmax or erf-gelu loop still runs one ``expf`` per
lane. This pass rewrites, in every PrimFunc of the module:

    exp(x)     -> 2^n * p(f),  n = round(x / ln2), f = x - n ln2  (Cephes expf polynomial)
    erf(x)     -> x P(x^2) / Q(x^2) on x clamped to [-4, 4]       (Eigen's float erf)
    sigmoid(x) -> 1 / (1 + exp(-x))                                 (with the exp above)
    tanh(x)    -> x P(x^2) / Q(x^2) on x clamped to [-7.9, 7.9]    (Eigen's float tanh)

All are plain arithmetic, floor, min/max and a bit cast, which LLVM vectorizes. Accuracy is
a few float32 ulp (max abs error below 1e-6 on the ranges that matter); NaN inputs are not
propagated (they clamp to a bound). Inputs beyond exp's float range clamp to it: exp of
anything below -87.3 gives 1.2e-38 instead of a denormal or 0.
"""

from __future__ import annotations

import tvm
import tvm_ffi
from tvm import tirx

F32 = "float32"

_EXP_P = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2,
          1.6666665459e-1, 5.0000001201e-1)
_ERF_ALPHA = (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06,
              -5.69250639462346e-05, -7.34990630326855e-04, -2.95459980854025e-03,
              -1.60960333262415e-02)
_ERF_BETA = (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03,
             -7.37332916720468e-03, -1.42647390514189e-02)
_TANH_ALPHA = (-2.76076847742355e-16, 2.00018790482477e-13, -8.60467152213735e-11,
               5.12229709037114e-08, 1.48572235717979e-05, 6.37261928875436e-04,
               4.89352455891786e-03)
_TANH_BETA = (1.19825839466702e-06, 1.18534705686654e-04, 2.26843463243900e-03,
              4.89352518554385e-03)


def _c(value: float) -> tirx.PrimExpr:
    return tirx.const(value, F32)


def _horner(x: tirx.PrimExpr, coeffs) -> tirx.PrimExpr:
    acc = _c(coeffs[0])
    for coef in coeffs[1:]:
        acc = acc * x + _c(coef)
    return acc


def _let(value: tirx.PrimExpr, body_fn) -> tirx.PrimExpr:
    """``let v = value in body_fn(v)`` so a compound argument is evaluated once."""
    if isinstance(value, (tirx.Var, tirx.FloatImm)):
        return body_fn(value)
    var = tirx.Var("fm", F32)
    return tirx.Let(var, value, body_fn(var))


def fast_exp(x: tirx.PrimExpr) -> tirx.PrimExpr:
    def body(xv):
        v = tirx.max(tirx.min(xv, _c(88.3762626647949)), _c(-87.3365447504))
        n = tirx.min(tirx.floor(v * _c(1.44269504088896341) + _c(0.5)), _c(127.0))

        def with_n(nv):
            f = v - nv * _c(0.693359375) + nv * _c(2.12194440e-4)

            def with_f(fv):
                y = _horner(fv, _EXP_P) * fv * fv + fv + _c(1.0)
                bits = tirx.Cast("int32", nv + _c(127.0)) << tirx.const(23, "int32")
                return y * tirx.reinterpret(F32, bits)

            return _let(f, with_f)

        # Below the clamp the polynomial would give a denormal (~1.2e-38), not 0: masked
        # softmax entries (-1e9) then turn the next matmul 47x slower on denormal operands.
        return tirx.Select(xv < _c(-87.3365447504), _c(0.0), _let(n, with_n))

    return _let(x, body)


def _odd_rational(x: tirx.PrimExpr, bound: float, alpha, beta) -> tirx.PrimExpr:
    def body(v):
        v = tirx.max(tirx.min(v, _c(bound)), _c(-bound))

        def with_v(cv):
            def with_x2(x2):
                return cv * _horner(x2, alpha) / _horner(x2, beta)

            return _let(cv * cv, with_x2)

        return _let(v, with_v)

    return _let(x, body)


def fast_erf(x: tirx.PrimExpr) -> tirx.PrimExpr:
    return _odd_rational(x, 4.0, _ERF_ALPHA, _ERF_BETA)


def fast_tanh(x: tirx.PrimExpr) -> tirx.PrimExpr:
    return _odd_rational(x, 7.90531110763549805, _TANH_ALPHA, _TANH_BETA)


def fast_sigmoid(x: tirx.PrimExpr) -> tirx.PrimExpr:
    return _c(1.0) / (_c(1.0) + fast_exp(_c(0.0) - x))


_REWRITES = {
    "tirx.exp": fast_exp,
    "tirx.erf": fast_erf,
    "tirx.sigmoid": fast_sigmoid,
    "tirx.tanh": fast_tanh,
}


def _rewrite_call(call):
    op = call.op
    if not isinstance(op, tvm.ir.Op) or op.name not in _REWRITES:
        return call
    ty = call.ty
    if len(call.args) != 1 or not isinstance(ty, tvm.ir.PrimType) or str(ty.dtype) != F32:
        return call
    return _REWRITES[op.name](call.args[0])


def rewrite_fast_math(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """``func`` with its float32 exp / erf / sigmoid / tanh calls replaced (see module doc)."""
    body = tvm_ffi.structural_map(func.body, [(tvm.ir.Call, _rewrite_call)])
    return func if body.same_as(func.body) else func.with_body(body)


@tvm.transform.module_pass(opt_level=0, name="SparsecFastMath")
def fast_math_pass(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
    """Apply ``rewrite_fast_math`` to every PrimFunc of the module."""
    updates = {}
    for gvar, func in mod.functions_items():
        if isinstance(func, tirx.PrimFunc):
            new = rewrite_fast_math(func)
            if not new.same_as(func):
                updates[gvar] = new
    for gvar, func in updates.items():
        mod[gvar] = func
    return mod
