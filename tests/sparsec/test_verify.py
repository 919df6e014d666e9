"""A wrong kernel fails the compile, and the error names the first diverging layer."""

import numpy as np
import pytest

import sparsec
from sparsec.codegen.tvm.kernels import linear_dense
from sparsec.codegen.tvm.kernels import KernelDef
from sparsec.errors import VerificationError
from sparsec.models import examples


def test_mismatch_names_first_diverging_layer(monkeypatch):
    good = linear_dense.KERNELS[("SparseLinear", "dense")]

    def corrupt(spec, arrays, target):
        out = good.prepare(spec, arrays, target)
        if spec.entry == "fc2":  # break the second layer only
            out = {k: (v * 1.5 if v.dtype == np.float32 else v) for k, v in out.items()}
        return out

    monkeypatch.setitem(linear_dense.KERNELS, ("SparseLinear", "dense"),
                        KernelDef(prepare=corrupt, build=good.build))
    ex = examples.mlp_2to4()
    with pytest.raises(VerificationError, match=r"layer 'fc2' \(dense\) output .* diverges first"):
        sparsec.compile(ex.onnx_model, layout="dense")


def test_no_verify_skips_the_check(monkeypatch):
    ex = examples.lm_head()
    cm = sparsec.compile(ex.onnx_model, verify=False)
    assert cm.verification is None
