"""The Mamba graph (``compiler.ssm_graph``): a quantized Mamba-1 becomes a spec-checked graph
of the decoder's kinds and the state-space ones, in the block's instruction order; what it
cannot express yet is refused in one line."""

from __future__ import annotations

import pytest

from hwflow.compiler.ir import op_of
from hwflow.compiler.spec import SpecError, check_decoder_graph
from hwflow.compiler.ssm_graph import GraphError, mamba_graph
from hwflow.compiler.ssm_quant import quantize_mamba

from .test_ssm_interpret import _float_mamba, _float_mamba2, _tiny_mamba, _tiny_mamba2


@pytest.fixture(scope="module")
def fm():
    return _float_mamba(_tiny_mamba(0))


def test_block_order_and_spec(fm):
    g = mamba_graph(quantize_mamba(fm, rotate=True))
    check_decoder_graph(g)
    kinds = [op_of(g, n).kind for n in g.graph["schedule"] if n.startswith("L0.")]
    assert kinds == ["rmsnorm", "qlinear", "qlinear", "conv", "qlinear", "qlinear", "qlinear",
                     "qlinear", "scan", "silu_mul", "hadamard", "qlinear"]
    assert g.graph["family"] == "mamba" and g.graph["outputs"] == ["lm_head"]
    assert op_of(g, "L0.hadamard").attrs["lgb"] == 4        # d_inner 80: blocks of 16


def test_spec_names_a_bad_scan(fm):
    g = mamba_graph(quantize_mamba(fm, rotate=False))
    op = op_of(g, "L1.scan")
    g.nodes["L1.scan"]["op"] = op.with_attrs(a_codes=op.attrs["a_codes"][:, :3])
    with pytest.raises(SpecError, match="L1.scan"):
        check_decoder_graph(g)


def test_refuses_what_is_not_lowered_yet(fm):
    with pytest.raises(GraphError, match="4-bit activations"):
        mamba_graph(quantize_mamba(fm, wbits=4, abits=4))
    with pytest.raises(GraphError, match="Mamba-2"):
        mamba_graph(quantize_mamba(_float_mamba2(_tiny_mamba2(0))))
