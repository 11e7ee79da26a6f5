"""mapping.linear: the one lowering of a linear layer (plan, weight block, MATMUL / TMATMUL)
that the MLP and the decoder lowerings share."""

from __future__ import annotations

import ast
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from hwflow.hw.config import AccelConfig
from hwflow.hw.isa import (
    FLAG_GAMMA,
    FLAG_INT4,
    FLAG_RELU,
    FLAG_RESIDUAL,
    Instr,
    Opcode,
    field_max,
)
from hwflow.mapping.errors import MappingError
from hwflow.mapping.linear import (
    absquant,
    matmul,
    matmul_layout,
    matmul_nbytes,
    matmul_report,
    pack_matmul,
    pack_tmatmul,
    plan_matmul,
    plan_tmatmul,
    tmatmul,
    tmatmul_nbytes,
    tmatmul_report,
)
from hwflow.mapping.ternary_format import block_layout, unpack_ternary_block
from hwflow.mapping.weight_format import unpack_weight_block

ROOT = Path(__file__).resolve().parents[2]
#: P = 4, L = 8, SB = 32; TLMM G = 3, T = 2, Q = 3.
CFG = AccelConfig(chains=4, chain_len=8, mem_ports=1, port_bytes=32, act_depth=1024,
                  weight_depth=128, tlmm=True, tlmm_g=3, tlmm_t=2, tlmm_q=3, tlmm_acc_depth=64)
RNG = np.random.default_rng(7)


def _layer(n, k, ternary=False):
    lo, hi = (-1, 2) if ternary else (-128, 128)
    return (RNG.integers(lo, hi, (n, k)).astype(np.int8), RNG.integers(-999, 999, n),
            RNG.integers(1, 1 << 15, n))


def test_matmul_plan_pack_and_instruction_agree():
    w, b, m = _layer(13, 21)                                 # 13 channels, K = 21: 3 words
    plan = plan_matmul("fc", CFG, w, 3)
    assert (plan.k_words, plan.n_out, plan.n_tiles) == (3, 13, 4)   # C = P = 4 per tile
    assert plan.requested == "int8 dense" and not plan.fmt.int4
    data = pack_matmul("fc", CFG, plan, w, b, m)
    assert len(data) == matmul_nbytes(CFG, plan)
    W, B, M = unpack_weight_block(CFG, plan.fmt, data, plan.k_words, plan.n_tiles)
    np.testing.assert_array_equal(W[:13, :21], w)
    np.testing.assert_array_equal(B[:13], b)
    ins = matmul(plan, 9, wgt=100, x=5, out=40, rows=2, words=2, res=70, res_mult=77, relu=True)
    assert ins == Instr(Opcode.MATMUL, FLAG_RESIDUAL | FLAG_RELU, 9, ext=100, a=5, out=40, b=70,
                        rows=2, k_words=3, n_tiles=4, n=13, words=2, mult_b=77,
                        tile_mem_rows=plan.tile_mem_rows, lgm=plan.fmt.lgm, lgr=plan.fmt.lgr)
    # the residual multiplier is only encoded with a residual
    assert matmul(plan, 9, 100, 5, 40, 2, 2, res_mult=77).mult_b == 0
    assert f"{plan.n_tiles} tiles" in matmul_layout(CFG, plan)
    rep = matmul_report("fc", plan, w.shape, len(data))
    assert (rep["engine"], rep["out_features"], rep["in_features"]) == ("mpe", 13, 21)


def test_int4_plan_sets_the_flag():
    w = RNG.integers(-7, 8, (8, 32)).astype(np.int8)
    plan = plan_matmul("fc4", CFG, w, 4, wbits=4)
    assert plan.fmt.int4 and plan.requested == "int4 dense"
    assert matmul(plan, 0, 0, 0, 0, 1, 1).flags == FLAG_INT4


def test_matmul_refusals_name_the_layer():
    w, _, _ = _layer(8, 40)
    with pytest.raises(MappingError, match=r"layer 'fc': 40 input features exceed .* 4 words"):
        plan_matmul("fc", CFG, w, 4)
    with pytest.raises(MappingError, match=r"layer 'fc' .* weight_depth >= \d+"):
        plan_matmul("fc", replace(CFG, weight_depth=2), w, 5)


def test_tmatmul_plan_pack_and_instruction_agree():
    w, b, m = _layer(7, 20, ternary=True)
    tp = plan_tmatmul("t", CFG, 7, 20)
    assert (tp.G, tp.T, tp.Q, tp.k_groups) == (3, 2, 3, 7)
    assert tp.index_records == -(-7 // 2) * -(-7 // 3) == block_layout(7, 20, 3, 2, 3, 32)[
        "records"]
    data = pack_tmatmul("t", CFG, tp, w, b, m)
    assert len(data) == tmatmul_nbytes(CFG, tp)
    t, bias, mult = unpack_ternary_block(data, 7, 20, 3, 2, 3, 32)
    np.testing.assert_array_equal(t, w)
    np.testing.assert_array_equal(bias, b)
    ins = tmatmul(tp, 7, wgt=3, x=10, x_words=4, out=30, rows=2, words=1, m_addr=50)
    assert ins == Instr(Opcode.TMATMUL, 0, 7, ext=3, a=10, out=30, rows=2, k_groups=7,
                        n_out=7, x_words=4, words=1, m_addr=50)
    assert tmatmul(tp, 7, 3, 10, 4, 30, 2, 1, 50, res=60, res_mult=5).flags == FLAG_RESIDUAL
    q = absquant(10, 12, 2, 20, 4, 50, gamma=8)
    assert (q.op, q.flags, q.a, q.out, q.g, q.n) == (Opcode.ABSQUANT, FLAG_GAMMA, 10, 12, 8, 20)
    rep = tmatmul_report("t", tp, w.shape, len(data))
    assert rep["tlmm"] == {"G": 3, "T": 2, "Q": 3} and rep["index_records"] == tp.index_records


def test_tmatmul_refusals():
    with pytest.raises(MappingError, match=r"layer 't' has ternary weights, but .* no TLMM"):
        plan_tmatmul("t", replace(CFG, tlmm=False), 7, 20)
    with pytest.raises(MappingError, match=r"tlmm_acc_depth >= 65"):
        plan_tmatmul("t", CFG, 65, 20)
    big = replace(CFG, tlmm_acc_depth=1 << 17)
    with pytest.raises(MappingError, match=r"n_out=65536 exceeds the TMATMUL field limit 65535"):
        plan_tmatmul("t", big, 1 << 16, 3)
    w, b, m = _layer(7, 20)
    w[0, 0] = 2
    with pytest.raises(MappingError, match=r"layer 't' is marked ternary"):
        pack_tmatmul("t", CFG, plan_tmatmul("t", CFG, 7, 20), w, b, m)


def test_field_max_reads_the_isa_table():
    assert field_max(Opcode.MATMUL, "n") == 65535
    assert field_max(Opcode.MATMUL, "lgm") == 7
    assert field_max(Opcode.TMATMUL, "ext") == (1 << 32) - 1


def _encoders(path: Path) -> list[str]:
    """``Instr(Opcode.MATMUL|TMATMUL|ABSQUANT, ...)`` constructions in a source file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Instr" and node.args
                and isinstance(node.args[0], ast.Attribute)
                and node.args[0].attr in ("MATMUL", "TMATMUL", "ABSQUANT")):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_one_linear_encoder():
    """Every program's MATMUL, TMATMUL and ABSQUANT come from mapping.linear: no other source
    file builds one (tests build their own, as independent checks)."""
    sources = [p for d in ("compiler", "mapping", "sim", "hwflow", "benchmarks")
               for p in sorted((ROOT / d).rglob("*.py"))]
    found = [f for p in sources for f in _encoders(p)]
    assert found and all(f.startswith("mapping/linear.py:") for f in found), found
