import pytest

from sparsec.errors import UsageError
from sparsec.layouts import Layout, parse_layout
from sparsec.options import CompileOptions, parse_input_shape, parse_layout_option


def test_parse_layout_names():
    assert parse_layout("BSR4x4") == Layout("bsr", (4, 4))
    assert parse_layout("nm2:4").name == "nm2:4"
    assert parse_layout("chw-spmm").is_sparse
    assert not parse_layout("dense").is_sparse


@pytest.mark.parametrize("bad", ["csc", "bsr0x4", "nm4:2", "nm2:4:8", ""])
def test_unknown_layouts_are_usage_errors(bad):
    with pytest.raises(UsageError, match="layout"):
        parse_layout(bad)


def test_input_shape_syntax():
    assert parse_input_shape("x=8x512") == ("x", (8, 512))
    assert parse_input_shape("input.1=1,3,224,224") == ("input.1", (1, 3, 224, 224))
    for bad in ["x", "x=", "x=8xy", "=8", "x=0x3", "x=-1"]:
        with pytest.raises(UsageError, match="input-shape"):
            parse_input_shape(bad)


def test_forced_layout_precedence():
    opts = CompileOptions(layouts=dict([parse_layout_option("csr"),
                                        parse_layout_option("fc1=bsr4x4"),
                                        parse_layout_option("node_7=nm2:4")]))
    assert opts.forced_layout("node_0", "fc1.weight") == "bsr4x4"
    assert opts.forced_layout("node_7", "fc1.weight") == "nm2:4"
    assert opts.forced_layout("other", "w") == "csr"
    assert CompileOptions().forced_layout("a", "b") is None
    with pytest.raises(UsageError):
        CompileOptions(layouts={"fc1": "sparse"})
