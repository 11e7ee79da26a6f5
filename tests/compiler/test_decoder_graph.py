"""The decoder as graph IR (``compiler.decoder_graph``) and its spec check
(``compiler.spec.check_decoder_graph``): every family's quantized decoder becomes a graph of
decoder-level ops in program order that passes the check, arrays shared where nothing can write
them, and each rule, broken on a copy, is refused with the node and the rule named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hwflow.compiler.decoder_graph import GAMMA_SLOTS, decoder_graph, linear_of
from hwflow.compiler.errors import SpecError
from hwflow.compiler.ir import copy_graph, op_of, set_op
from hwflow.compiler.llm_config import shape_decoder, shape_from_config
from hwflow.compiler.llm_frontend import load_decoder
from hwflow.compiler.llm_quant import quantize_decoder
from hwflow.compiler.ops import DECODER_KINDS, Op, freeze_value
from hwflow.compiler.spec import check_decoder_graph
from hwflow.llm_examples import write_tiny_bitnet, write_tiny_llama

ROOT = Path(__file__).resolve().parents[2]


def _quantized(folder, weights=None, **kw):
    fd = load_decoder(folder, max_context=32)
    return quantize_decoder(fd, 32, **({"weights": weights} if weights else {}), **kw)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    t = tmp_path_factory.mktemp("models")
    return {
        "llama-mixed": _quantized(write_tiny_llama(t / "l"), "mixed"),
        "bitnet": _quantized(write_tiny_bitnet(t / "b")),
        "qwen3": _quantized(write_tiny_llama(t / "q", family="qwen3")),
        "gemma2": _quantized(write_tiny_llama(t / "g", family="gemma2")),
    }


def _kinds(g, layer: int) -> list:
    return [op_of(g, n).kind for n in g.graph["schedule"] if n.startswith(f"L{layer}.")]


@pytest.mark.parametrize("name", ["llama-mixed", "bitnet", "qwen3", "gemma2"])
def test_every_family_is_a_checked_graph(models, name):
    qd = models[name]
    g = decoder_graph(qd)
    assert check_decoder_graph(g) is g          # arrays too: the quantizer's values
    sched = g.graph["schedule"]
    assert sched == list(g.nodes) and sched[:2] == ["embed", "rope_table"]
    assert sched[-2:] == ["final_norm", "lm_head"] and g.graph["outputs"] == ["lm_head"]
    assert {op_of(g, n).kind for n in sched} <= DECODER_KINDS
    # one qlinear per linear of every layer, the decoder's own arrays and epilogue
    for i, ly in enumerate(qd.layers):
        for lin in ("q", "k", "v", "o", "gate", "up", "down"):
            ql, got = getattr(ly, lin), linear_of(op_of(g, f"L{i}.{lin}"))
            np.testing.assert_array_equal(got.weight, ql.weight)
            assert (got.shift, got.res_mult, got.ternary) == (ql.shift, ql.res_mult, ql.ternary)
            assert (got.w4 is None) == (ql.w4 is None)
    # the quantized decoder is read-only (freeze_decoder), so its graph shares its arrays
    assert op_of(g, "L0.q").attrs["weight"] is qd.layers[0].q.weight
    assert op_of(g, "embed").attrs["table"] is qd.embed and not qd.embed.flags.writeable
    assert op_of(g, "L0.attn").attrs["layer"] == 0
    assert op_of(g, f"L{len(qd.layers) - 1}.attn").attrs["layer"] == len(qd.layers) - 1


def test_program_order_of_each_family(models):
    g = decoder_graph(models["llama-mixed"])
    assert _kinds(g, 0) == ["rmsnorm", "qlinear", "qlinear", "qlinear", "rope", "rope",
                            "attention", "qlinear", "rmsnorm", "qlinear", "qlinear", "silu_mul",
                            "qlinear"]
    assert op_of(g, "L0.o").inputs == ("L0.attn", "embed")     # o adds the residual stream
    assert op_of(g, "L1.o").inputs[1] == "L0.down"
    # BitNet: each ternary linear reads an ABSQUANT (with its gamma codes), loaded after the
    # input norm; the residual adds after o and down are VADDs
    b = decoder_graph(models["bitnet"])
    assert _kinds(b, 0) == ["rmsnorm", "gamma_codes", "absquant", "qlinear", "qlinear",
                            "qlinear", "rope", "rope", "attention", "rmsnorm", "absquant",
                            "qlinear", "qadd", "rmsnorm", "absquant", "qlinear", "qlinear",
                            "silu_mul", "rmsnorm", "absquant", "qlinear", "qadd"]
    assert op_of(b, "L0.attn_absquant").attrs["gamma"] == "attn_gamma"
    assert set(op_of(b, "L0.gamma").attrs) - {"area"} == {
        "attn_gamma", "attn_sub_gamma", "mlp_gamma", "mlp_sub_gamma"}
    # Qwen3: a per-head RMSNORM of q and of k before RoPE; Gemma 2: post-norms then VADDs
    q = decoder_graph(models["qwen3"])
    assert op_of(q, "L0.q_norm").attrs["heads"] == models["qwen3"].shape.heads
    assert op_of(q, "L0.q_rope").inputs[0] == "L0.q_norm"
    gm = decoder_graph(models["gemma2"])
    assert _kinds(gm, 0)[:1] == ["gamma_codes"]
    assert op_of(gm, "L0.o_post_norm").attrs["gamma"] == "post_attn_gamma"
    assert op_of(gm, "L0.o_add").inputs == ("L0.o_post_norm", "embed")
    assert op_of(gm, "lm_head").attrs["cap"] == tuple(models["gemma2"].final_cap)


def test_immutable_arrays_are_shared_not_copied():
    """A 7B shape-only decoder's zero-stride weights go into the graph as they are (a copy
    would materialize 6.7 GB), and the graph passes its structural check."""
    cs = shape_from_config(ROOT / "examples/configs/llama-2-7b.json")
    qd = shape_decoder(cs, 2048, weights="int4")
    g = check_decoder_graph(decoder_graph(qd), arrays=False)
    w = op_of(g, "L31.down").attrs["weight"]
    assert w is qd.layers[31].down.weight and w.shape == (4096, 11008) and not any(w.strides)
    # a writeable array is copied (and made read-only)
    live = np.zeros(3, dtype=np.int8)
    frozen = freeze_value(live)
    assert frozen is not live and not frozen.flags.writeable


def _broken(g, name, **attrs):
    g2 = copy_graph(g)
    op = op_of(g2, name)
    set_op(g2, name, op.with_attrs(**attrs))
    return g2


def _raises(g, *parts, arrays=True):
    with pytest.raises(SpecError) as e:
        check_decoder_graph(g, arrays=arrays)
    msg = str(e.value)
    assert all(p in msg for p in parts), msg
    return msg


def test_broken_rules_are_named(models):
    g = decoder_graph(models["llama-mixed"])
    _raises(_broken(g, "L0.q_rope", area="h"), "L0.q_rope", "in place")
    _raises(_broken(g, "L0.o", area="h"), "L0.o", "residual stream in place")
    _raises(_broken(g, "L0.act", act="tanh"), "L0.act", "gate activation 'tanh'")
    _raises(_broken(g, "L0.attn", smul=1 << 20), "L0.attn", "smul")
    _raises(_broken(g, "L0.attn_norm", gamma="nope"), "L0.attn_norm", "not a gamma slot")
    _raises(_broken(g, "L0.q", ternary=True), "L0.q", "reads an absquant's output")
    mult = np.array(op_of(g, "L0.k").attrs["mult"])
    mult[0] = 1 << 17
    _raises(_broken(g, "L0.k", mult=mult), "L0.k", "mult outside the u16 range")
    check_decoder_graph(_broken(g, "L0.k", mult=mult), arrays=False)     # values not read
    _raises(_broken(g, "L0.v", weight=np.zeros((3, 3), np.int8)), "L0.v", "weight [out, in]")
    bad = copy_graph(g)
    bad.graph["schedule"] = list(reversed(bad.graph["schedule"]))
    _raises(bad, "scheduled before its input")
    bad = copy_graph(g)
    up = op_of(bad, "L0.up")
    set_op(bad, "L0.up", Op("linear", up.inputs, up.out, up.attrs))
    _raises(bad, "L0.up", "does not belong in a decoder graph")
    b = decoder_graph(models["bitnet"])
    _raises(_broken(b, "L0.gamma", attn_gamma=np.zeros(4, np.int16)), "gamma codes 'attn_gamma'")
    assert set(GAMMA_SLOTS) >= {"attn_gamma", "q_norm_gamma", "post_mlp_gamma"}
