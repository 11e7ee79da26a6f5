"""mapping.lower, ternary layers (docs/architecture.md, "Ternary path"): ABSQUANT +
TMATMUL per ternary ``qlinear``, the TLMM scratch area, reports, refusal without a TLMM
engine; golden (the IR interpreter) == ISA functional model.

The graphs come from a small torch MLP compiled with ``weights="ternary"``; one test also edits
an int8 graph into a ternary one by hand (a mixed program: MPE and TLMM layers side by side).
"""

from __future__ import annotations

import types
from dataclasses import replace

import numpy as np
import pytest
import torch

from hwflow.compiler import FlowOptions, TileTarget, from_module, run, run_flow
from hwflow.golden import int8 as g8
from hwflow.golden import ternary as gt
from hwflow.hw.config import AccelConfig
from hwflow.hw.isa import FLAG_RELU, FLAG_RESIDUAL, Opcode
from hwflow.mapping import cycles
from hwflow.mapping.errors import MappingError
from hwflow.mapping.lower import lower
from hwflow.mapping.memory_image import read_tensor
from hwflow.mapping.ternary_format import block_layout
from hwflow.sim.isa_model import run_program

#: P = 4, L = 8, SB = 32; TLMM G = 3, T = 2, Q = 3 (partial chunks and channel blocks).
CFG = AccelConfig(chains=4, chain_len=8, mem_ports=1, port_bytes=32, act_depth=1024,
                  weight_depth=128, tlmm=True, tlmm_g=3, tlmm_t=2, tlmm_q=3, tlmm_acc_depth=64)


class _ResMLP(torch.nn.Module):
    """Linear layers with ReLU and a residual add (the compiler fuses the add into an int8
    linear, never into a ternary one: VADD there)."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(37, 48)
        self.b = torch.nn.Linear(48, 48)
        self.c = torch.nn.Linear(48, 10)

    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.c(self.b(h) + h)


def _compile(cfg, weights="ternary", edit=None, rows=5, model=None):
    torch.manual_seed(0)
    net = model or _ResMLP()
    torch.manual_seed(1)
    x = torch.randn(rows, 37)
    g = from_module(net, "mlp", example=x)
    q = run_flow(g, FlowOptions(TileTarget.from_config(cfg), calib=x.numpy(), weights=weights))
    if edit:
        edit(q)
    in_name = q.graph["inputs"][0]
    xq = g8.quantize(x.numpy(), q.nodes[in_name]["op"].out.scale)
    return q, x.numpy(), in_name, lower(q, cfg, {in_name: xq})


def _check_exact(cfg, q, x, in_name, low):
    """golden (the interpreter) == ISA functional model on the lowered program."""
    image, stats = run_program(cfg, low.image, low.prog_base, regions=low.memory_map)
    _, values = run(q, {in_name: x}, intermediates=True)
    for o in q.graph["outputs"]:
        np.testing.assert_array_equal(read_tensor(image, low.memory_map, o),
                                      values[q.nodes[o]["op"].inputs[0]])
    return stats


def test_ternary_mlp_lowers_exactly():
    q, x, in_name, low = _compile(CFG)
    stats = _check_exact(CFG, q, x, in_name, low)
    kinds = [i.op for i in low.program]
    assert kinds.count(Opcode.ABSQUANT) == kinds.count(Opcode.TMATMUL) == 3
    assert Opcode.MATMUL not in kinds
    # every TMATMUL directly follows the ABSQUANT of its input
    for i, ins in enumerate(low.program):
        if ins.op == Opcode.TMATMUL:
            aq = low.program[i - 1]
            assert aq.op == Opcode.ABSQUANT
            assert (aq.out, aq.m_addr, aq.words) == (ins.a, ins.m_addr, ins.x_words)
    layers = [la for la in low.layers if la["kind"] == "qlinear"]
    tm = [i for i in low.program if i.op == Opcode.TMATMUL]
    assert [la["engine"] for la in layers] == ["tlmm"] * 3
    lookups = 0
    for la, ins in zip(layers, tm, strict=True):
        lay = block_layout(la["out_features"], la["in_features"], 3, 2, 3, CFG.beat_bytes)
        assert la["format"] == la["weights"] == "ternary"
        # one row a pass on this engine: a busy cycle per record of every row
        assert la["tlmm"] == {"G": 3, "T": 2, "Q": 3, "lookups": la["rows"] * lay["records"],
                              "busy_cycles": la["rows"] * lay["records"]}
        assert ins.k_groups == la["k_groups"] == -(-la["in_features"] // 3)
        assert ins.n_out == la["out_features"]
        assert la["weight_bytes"] == lay["total_beats"] * CFG.beat_bytes
        assert la["macs"] == la["rows"] * la["in_features"] * la["out_features"]
        lookups += la["tlmm"]["lookups"]
        region = low.memory_map.region(f"weights:{la['name']}")
        assert region.layout.startswith("TMATMUL block, G=3 T=2 Q=3")
    assert stats.tlmm_lookups == stats.tlmm_busy_cycles == lookups
    assert stats.mpe_kgroups == 0
    # flags: the first layer has ReLU; the residual add stays a VADD after a ternary layer
    assert tm[0].flags & FLAG_RELU and not any(i.flags & FLAG_RESIDUAL for i in tm)
    assert kinds.count(Opcode.VADD) == 1
    # the scratch area lies above every allocation of the memory plan
    top = max(op.mem.addr + op.mem.span for op in (q.nodes[n]["op"] for n in q.nodes)
              if op.mem is not None)
    assert all(i.a >= top and i.m_addr >= top for i in tm)


@pytest.mark.parametrize("G,T,Q", [(2, 1, 1), (3, 4, 4), (4, 3, 5)])
def test_every_group_size_and_engine_shape(G, T, Q):
    cfg = replace(CFG, tlmm_g=G, tlmm_t=T, tlmm_q=Q)
    q, x, in_name, low = _compile(cfg, rows=3)
    _check_exact(cfg, q, x, in_name, low)


def test_single_row_decode_shape():
    q, x, in_name, low = _compile(CFG, rows=1)
    _check_exact(CFG, q, x, in_name, low)


def _make_middle_ternary(q):
    """Hand edit: the middle qlinear of an int8 graph becomes ternary (weights {-1, 0, 1},
    bias and multipliers in units of acc * m); the interpreter then runs it as TLMM does."""
    name = [n for n in q.graph["schedule"] if q.nodes[n]["op"].kind == "qlinear"][1]
    op = q.nodes[name]["op"]
    w = op.attrs["weight"]
    rng = np.random.default_rng(0)
    t = rng.integers(-1, 2, size=w.shape).astype(np.int8)
    n = w.shape[0]
    attrs = {**op.attrs, "weight": t, "w_scale": np.full(n, 0.05), "ternary": True, "wbits": 2,
             "sparsity": (1, 1), "bias": rng.integers(-500, 500, n).astype(np.int32),
             "mult": np.full(n, 3), "shift": 10}
    q.nodes[name]["op"] = replace(op, attrs=types.MappingProxyType(attrs))


def test_hand_made_ternary_layer_between_int8_layers():
    q, x, in_name, low = _compile(CFG, weights="int8", edit=_make_middle_ternary)
    _check_exact(CFG, q, x, in_name, low)
    engines = [la["engine"] for la in low.layers if la["kind"] == "qlinear"]
    assert engines == ["mpe", "tlmm", "mpe"]
    assert [i.op for i in low.program].count(Opcode.MATMUL) == 2
    # the int8 graph had the residual add fused into this layer: a residual TMATMUL
    (tm,) = [i for i in low.program if i.op == Opcode.TMATMUL]
    assert tm.flags & FLAG_RESIDUAL and tm.mult_b
    # the interpreter's ternary rule is golden's: absmax_quant, lookup sums, epilogue on acc*m
    name = [n for n in q.graph["schedule"] if q.nodes[n]["op"].kind == "qlinear"][1]
    op = q.nodes[name]["op"]
    _, vals = run(q, {in_name: x}, intermediates=True)
    xq, m = gt.absmax_quant(vals[op.inputs[0]])
    acc = gt.lookup_matmul(xq, gt.encode_groups(op.attrs["weight"], 3), 3)
    res = vals[op.inputs[1]] if len(op.inputs) > 1 else None
    want = g8.requantize(acc * m[:, None], op.attrs["bias"], op.attrs["mult"],
                         op.attrs["shift"], op.attrs["relu"], res, op.attrs["res_mult"])
    np.testing.assert_array_equal(vals[name], want)


def test_int8_layers_keep_their_lowering():
    a = _compile(CFG, weights="int8")[3]
    b = _compile(replace(CFG, tlmm=False), weights="int8")[3]
    assert a.image == b.image and a.layers == b.layers
    assert all(la["engine"] in ("mpe", "epilogue") for la in a.layers)
    assert {i.op for i in a.program} <= {Opcode.LOAD, Opcode.STORE, Opcode.MATMUL,
                                         Opcode.VADD, Opcode.END}


def test_no_tlmm_engine_is_a_clear_error():
    with pytest.raises(MappingError, match=r"layer '\w+' has ternary weights, but this board's "
                                           r"accelerator has no TLMM engine.*engine: tlmm: "
                                           r"true"):
        _compile(replace(CFG, tlmm=False))


def test_accumulator_too_small_names_layer_and_depth():
    with pytest.raises(MappingError, match=r"layer '\w+' has 48 output channels, the TLMM "
                                           r"accumulator holds tlmm_acc_depth=40"):
        _compile(replace(CFG, tlmm_acc_depth=40))


def test_scratch_area_must_fit_the_buffer():
    q, *_ = _compile(CFG)
    top = max(op.mem.addr + op.mem.span for op in (q.nodes[n]["op"] for n in q.nodes)
              if op.mem is not None)
    with pytest.raises(MappingError, match=r"TLMM scratch area .* act_depth=" + str(top + 3)):
        _compile(replace(CFG, act_depth=top + 3))


def test_cycle_model_has_tlmm_terms():
    _, _, _, low = _compile(CFG)
    pred = cycles.predict(low.program, CFG)
    for ins, c in zip(low.program, pred["per_instruction"], strict=True):
        if ins.op == Opcode.TMATMUL:
            assert c >= ins.rows * cycles.tmatmul_records(ins, CFG) > 0
        if ins.op == Opcode.ABSQUANT:
            assert c >= 2 * ins.rows * ins.words * CFG.chain_len


def test_same_inputs_give_identical_images():
    a = _compile(CFG)[3]
    b = _compile(CFG)[3]
    assert a.image == b.image and a.layers == b.layers
