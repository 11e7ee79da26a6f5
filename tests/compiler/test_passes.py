"""Each pass is tested by running the interpreter on the graph before and after it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hwflow.compiler import (
    CompileError,
    TileTarget,
    check,
    from_module,
    fuse,
    memory_plan,
    quantize,
    run,
    schedule,
    tile,
)
from hwflow.compiler.ir import copy_graph, op_of, set_op
from hwflow.compiler.ops import FUSED_KINDS
from hwflow.compiler.passes import (
    INT4_MAX_ERROR,
    _linears,
    int4_error,
    parse_sparsity,
    precision,
    sparsify,
)
from hwflow.golden import int4 as g4
from hwflow.golden import int8 as g8
from hwflow.golden import sparse as gs
from hwflow.golden.metrics import cosine, max_abs_error

from .conftest import TARGET
from .models import make, prune_2_4


def _inputs(x):
    return {"x": np.asarray(x, dtype=np.float64)}


def _kinds(g):
    return sorted(op_of(g, n).kind for n in g.nodes)


@pytest.fixture
def quantized(float_graph, x3):
    return check(quantize(float_graph, x3.numpy()))


@pytest.fixture
def fused(quantized):
    return check(fuse(quantized))


@pytest.fixture
def planned(fused):
    return check(memory_plan(check(schedule(check(tile(fused, TARGET)))), TARGET))


# ------------------------------------------------------------------------ sparsify / precision

class Four(torch.nn.Module):
    """Four linear layers (first, two middle, last) for the mixed rule; K multiples of 4."""

    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(24, 64), torch.nn.Linear(64, 64)
        self.c, self.d = torch.nn.Linear(64, 64), torch.nn.Linear(64, 8)

    def forward(self, x):
        h = torch.relu(self.a(x))
        h = torch.relu(self.b(h) + h)
        return self.d(torch.relu(self.c(h)))


@pytest.fixture
def four():
    torch.manual_seed(0)
    m = Four().eval()
    prune_2_4(m.b)                      # pruned in torch, as a user would
    x = torch.randn(4, 24)
    return from_module(m, "four", example=x), x.numpy()


def _w(g, name):
    return np.asarray(op_of(g, name).attrs["weight"])


def test_sparsify_detects_torch_pruning_and_keeps_weights(four):
    g, _ = four
    s = check(sparsify(g))
    assert [op_of(s, n).attrs["sparsity"] for n in _linears(s)] == [(1, 1), (2, 4), (1, 1),
                                                                   (1, 1)]
    for n in _linears(s):
        assert np.array_equal(_w(s, n), _w(g, n))   # auto never changes a weight
    f = s.graph["weight_formats"]
    assert f["linear_1"] == {"sparsity": "2:4", "sparsity_from": "detected"}
    assert f["linear"]["sparsity"] == "dense"
    assert "weight_formats" not in g.graph and "sparsity" not in op_of(g, "linear").attrs


@pytest.mark.parametrize("nm", [(2, 4), (1, 4), (2, 8), (4, 16), (1, 2)])
def test_sparsify_imposes_magnitude_pruning(four, nm):
    g, x = four
    s = check(sparsify(g, f"{nm[0]}:{nm[1]}"))
    for n in _linears(s):
        a = op_of(s, n).attrs
        assert a["sparsity"] == nm and gs.satisfies_nm(a["weight"], *nm)
        assert np.array_equal(a["weight"], gs.prune_nm(_w(g, n), *nm))
        assert a["weight"].dtype == np.float32
        assert s.graph["weight_formats"][n]["sparsity_from"] == "imposed"
    # imposed pruning changes the float model by design; the interpreter runs the pruned one
    out = run(s, _inputs(x))["output"]
    assert out.shape == (4, 8) and not np.array_equal(out, run(g, _inputs(x))["output"])


def test_sparsify_dense_records_1_1_without_detecting(four):
    g, _ = four
    s = check(sparsify(g, "dense"))
    assert {op_of(s, n).attrs["sparsity"] for n in _linears(s)} == {(1, 1)}
    assert s.graph["weight_formats"]["linear_1"]["sparsity_from"] == "dense"


def test_detection_finds_the_strongest_pattern():
    torch.manual_seed(0)
    lin = torch.nn.Linear(32, 8)
    with torch.no_grad():
        lin.weight.mul_(torch.arange(32) % 8 == 3)          # one nonzero per group of 8
    g = from_module(torch.nn.Sequential(lin).eval(), example=torch.randn(2, 32))
    (name,) = _linears(g)
    assert op_of(sparsify(g), name).attrs["sparsity"] == (1, 8)


def test_parse_sparsity():
    assert parse_sparsity("auto") == "auto" and parse_sparsity(" Dense ") == (1, 1)
    assert parse_sparsity("2:4") == (2, 4) and parse_sparsity((4, 16)) == (4, 16)
    for bad, rule in (("3:4", "M/N must be a power of two"), ("3:16", "M/N must be"),
                      ("1:32", "up to 16"), ("2:6", "power of two up to 16"),
                      ("5:4", "N must be between 1 and M"), ("2:", "form N:M"),
                      ("2/4", "form N:M")):
        with pytest.raises(CompileError, match=rule):
            parse_sparsity(bad)
    with pytest.raises(CompileError, match=r"sparsity '3:4': M/N .*use auto, dense or N:M"):
        sparsify(from_module(make(0), example=torch.randn(2, 37)), "3:4")


def test_int4_error_of_typical_weights():
    """The numbers the INT4_MAX_ERROR docstring quotes (golden.int4, groups of 32)."""
    rng = np.random.default_rng(0)
    uniform = rng.uniform(-1, 1, (256, 256))
    gauss = rng.standard_normal((256, 256))
    assert 0.06 < int4_error(uniform) < 0.08
    assert 0.09 < int4_error(gauss) < 0.11
    assert int4_error(np.zeros((3, 5))) == 0.0
    assert INT4_MAX_ERROR == 0.15


def _outliers(rows, k, seed=0):
    """A weight whose int4 error is far above the limit: one huge value per group of 32."""
    w = np.random.default_rng(seed).standard_normal((rows, k)) * 0.1
    w[:, ::32] = 3.0
    return w.astype(np.float32)


def test_precision_mixed_rule(four):
    g, x = four
    p = check(precision(sparsify(g), "mixed"))
    names = _linears(p)
    assert [op_of(p, n).attrs["wbits"] for n in names] == [8, 4, 4, 8]
    f = p.graph["weight_formats"]
    assert f[names[0]]["why"] == "mixed: first layer" and f[names[3]]["why"] == "mixed: last layer"
    for n in names[1:3]:
        assert f[n]["int4_error"] == pytest.approx(int4_error(_w(p, n)), abs=1e-6)
        assert f[n]["int4_error"] <= INT4_MAX_ERROR and f[n]["weights"] == "int4"
    # a middle layer whose int4 error exceeds the limit keeps int8
    c = names[2]
    bad = copy_graph(g)
    set_op(bad, c, op_of(bad, c).with_attrs(weight=_outliers(64, 64)))
    assert int4_error(_w(bad, c)) > INT4_MAX_ERROR
    p = check(precision(sparsify(bad), "mixed"))
    assert [op_of(p, n).attrs["wbits"] for n in names] == [8, 4, 8, 8]
    assert p.graph["weight_formats"][c]["why"].startswith("mixed: int4 error 0.")
    assert "> 0.15" in p.graph["weight_formats"][c]["why"]


def test_precision_uniform_choices_and_errors(four):
    g, _ = four
    for weights, bits in (("int8", 8), ("int4", 4)):
        p = check(precision(g, weights))
        assert {op_of(p, n).attrs["wbits"] for n in _linears(p)} == {bits}
    with pytest.raises(CompileError, match="weights 'fp8': use int8, int4, mixed"):
        precision(g, "fp8")
    # one or two linear layers: all of them are first or last, so mixed keeps int8
    one = from_module(torch.nn.Sequential(torch.nn.Linear(8, 4)).eval(),
                      example=torch.randn(2, 8))
    p = precision(one, "mixed")
    assert {op_of(p, n).attrs["wbits"] for n in _linears(p)} == {8}


def test_quantize_int4_attrs_and_tolerance(four):
    g, x = four
    q = check(quantize(precision(sparsify(g), "int4"), x))
    for n in _linears(g):
        a = op_of(q, n).attrs
        w4, s4, c = g4.quantize_weight_int4(np.asarray(_w(g, n), dtype=np.float64))
        assert a["wbits"] == 4
        assert np.array_equal(a["w4"], w4) and a["w4"].dtype == np.int8
        assert np.array_equal(a["w4_scale"], s4) and a["w4_scale"].dtype == np.uint8
        assert a["w4_scale"].shape == (a["weight"].shape[0], -(-a["weight"].shape[1] // 32))
        assert np.array_equal(a["weight"], g4.dequantize_int4(w4, s4))
        assert np.array_equal(a["w_scale"], c)
    # int4 weights on the calibration sample: measured cosine ~0.997 on this model
    f, o = run(g, _inputs(x))["output"], run(q, _inputs(x))["output"]
    print(f"int4: cosine {cosine(f, o):.5f}")
    assert cosine(f, o) > 0.99


@pytest.mark.parametrize("weights", ["int8", "int4", "mixed"])
def test_quantization_keeps_the_recorded_sparsity(four, weights):
    g, x = four
    s = precision(sparsify(g, "2:4"), weights)
    q = check(quantize(s, x))
    for n in _linears(g):
        a = op_of(q, n).attrs
        assert a["sparsity"] == (2, 4) and gs.satisfies_nm(a["weight"], 2, 4)
        assert a["wbits"] == op_of(s, n).attrs["wbits"]
        assert ("w4" in a) == (a["wbits"] == 4)
        # pruned entries stay exactly zero
        assert not a["weight"][_w(s, n) == 0].any()
    f, o = run(s, _inputs(x))["output"], run(q, _inputs(x))["output"]
    assert cosine(f, o) > 0.99          # against the pruned float model


def test_quantize_without_weight_format_passes_is_dense_int8(quantized):
    for n in quantized.nodes:
        a = op_of(quantized, n).attrs
        if op_of(quantized, n).kind == "qlinear":
            assert a["sparsity"] == (1, 1) and a["wbits"] == 8 and "w4" not in a


# ------------------------------------------------------------------------------------ quantize

def test_quantize_tolerance(float_graph, quantized, x3):
    """W8A8 vs float on the calibration sample: cosine > 0.999, max error < 3% of the range.

    Measured on this 37->53->37->11 MLP: cosine ~0.9999, max error ~1% of max|y|.
    """
    f = run(float_graph, _inputs(x3))["output"]
    q = run(quantized, _inputs(x3))["output"]
    err = max_abs_error(f, q) / np.abs(f).max()
    print(f"quantize: cosine {cosine(f, q):.6f}, max error {err:.4f} of max|y|")
    assert cosine(f, q) > 0.999
    assert err < 0.03


def test_quantize_arithmetic(float_graph, quantized, x3):
    lin = op_of(float_graph, "linear")
    q = op_of(quantized, "linear")
    w_q, s_w = g8.quantize_weight(lin.attrs["weight"])
    s_x = op_of(quantized, "x").out.scale
    s_y = q.out.scale
    assert s_x == g8.tensor_scale(x3.numpy().astype(np.float64))
    assert np.array_equal(q.attrs["weight"], w_q)
    assert np.array_equal(q.attrs["bias"], np.rint(lin.attrs["bias"] / (s_x * s_w)))
    assert q.attrs["shift"] == g8.choose_shift(s_x * s_w / s_y)
    assert np.array_equal(q.attrs["mult"],
                          g8.quantize_multiplier(s_x * s_w / s_y, q.attrs["shift"]))
    assert q.attrs["res_mult"] == 0 and q.attrs["relu"] is False
    # relu keeps its input's scale (max(q, 0) is exact), add gets its own
    assert op_of(quantized, "relu").out.scale == s_y
    add = op_of(quantized, "add")
    s_a, s_b = (op_of(quantized, i).out.scale for i in add.inputs)
    sh = add.attrs["shift"]
    assert add.kind == "qadd"
    assert add.attrs["a_mult"] == g8.quantize_multiplier(s_a / add.out.scale, sh)
    assert add.attrs["b_mult"] == g8.quantize_multiplier(s_b / add.out.scale, sh)
    assert op_of(quantized, "output").attrs["scale"] == op_of(quantized, "linear_2").out.scale


# ---------------------------------------------------------------------------------------- fuse

def test_fuse_leaves_only_hardware_kinds(fused):
    assert {op_of(fused, n).kind for n in fused.nodes} <= FUSED_KINDS
    assert _kinds(fused) == ["input", "output", "qlinear", "qlinear", "qlinear"]
    res = op_of(fused, "linear_1")
    assert len(res.inputs) == 2 and res.attrs["relu"] and res.attrs["res_mult"] > 0
    assert op_of(fused, "linear").attrs["relu"]


def test_fuse_relu_is_exact():
    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(19, 23), torch.nn.Linear(23, 5)
            self.c = torch.nn.Linear(19, 23)

        def forward(self, x):
            return torch.relu(self.b(torch.relu(self.a(x)) + torch.relu(self.c(x))))

    torch.manual_seed(0)
    x = torch.randn(3, 19)
    q = quantize(from_module(M().eval(), example=x), x.numpy())
    f = check(fuse(q))
    # every relu follows a single-user qlinear: all fold; the add (of two relus) stays a qadd
    assert _kinds(f) == ["input", "output", "qadd", "qlinear", "qlinear", "qlinear"]
    out_q, t_q = run(q, _inputs(x), intermediates=True)
    out_f, t_f = run(f, _inputs(x), intermediates=True)
    assert np.array_equal(out_q["output"], out_f["output"])
    for n, v in t_f.items():  # a fused node keeps the producer's name, holds the relu's value
        users = list(q.successors(n))
        relu = users[0] if len(users) == 1 and op_of(q, users[0]).kind == "relu" else n
        assert np.array_equal(v, t_q[relu]), n


def test_standalone_relu_becomes_exact_qadd():
    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(13, 7)

        def forward(self, x):
            return self.fc(torch.relu(x))  # relu of the input: no producer to fuse into

    torch.manual_seed(0)
    x = torch.randn(2, 13)
    q = quantize(from_module(M().eval(), example=x), x.numpy())
    f = check(fuse(q))
    (name,) = [n for n in f.nodes if op_of(f, n).kind == "qadd"]
    a = op_of(f, name).attrs
    assert (a["a_mult"], a["b_mult"], a["shift"], a["relu"]) == (1, 0, 0, True)
    xs = np.random.default_rng(0).normal(size=(50, 2, 13))
    for xi in xs:
        assert np.array_equal(run(q, _inputs(xi))["output"], run(f, _inputs(xi))["output"])


def test_fuse_residual_tolerance(quantized, fused, x3):
    """One rounding instead of two: the fused int8 result is within 1 LSB of the unfused one.

    Measured: at most 1 LSB on this model and sample.
    """
    _, t_q = run(quantized, _inputs(x3), intermediates=True)
    _, t_f = run(fused, _inputs(x3), intermediates=True)
    diff = np.abs(t_f["linear_1"].astype(int) - t_q["relu_1"].astype(int))
    print(f"residual fusion: max {diff.max()} LSB, {np.mean(diff > 0):.2%} of elements differ")
    assert diff.max() <= 1
    assert op_of(fused, "linear_1").out.scale == op_of(quantized, "relu_1").out.scale


def test_residual_not_fused_when_linear_has_other_users():
    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(9, 9), torch.nn.Linear(9, 9)

        def forward(self, x):
            h = self.a(x)
            return self.b(h + x) + h

    torch.manual_seed(0)
    x = torch.randn(2, 9)
    q = quantize(from_module(M().eval(), example=x), x.numpy())
    f = check(fuse(q))
    assert _kinds(f).count("qadd") == 1  # h + x stays (h has two users); b(...) + h fuses
    assert np.abs(run(f, _inputs(x))["output"] - run(q, _inputs(x))["output"]).max() < 0.1


# ---------------------------------------------------------------------------------------- tile

def test_tile_exact_and_shapes(fused, x3):
    t = check(tile(fused, TARGET))
    assert np.array_equal(run(fused, _inputs(x3))["output"], run(t, _inputs(x3))["output"])
    # 37 -> 53 -> 37 -> 11 on P=4 chains of L=8
    ti = op_of(t, "linear").tile
    assert (ti.k_words, ti.n_tiles, ti.out_words) == (5, 14, 7)
    ti = op_of(t, "linear_2").tile
    assert (ti.k_words, ti.n_tiles, ti.out_words) == (5, 3, 2)
    assert t.graph["target"]["chains"] == 4


def test_zero_padding_is_exact(fused, x3):
    """A padded tile computes what the unpadded layer does (the claim in passes.py)."""
    t = tile(fused, TARGET)
    _, vals = run(t, _inputs(x3), intermediates=True)
    op = op_of(t, "linear")
    ti, P, L = op.tile, TARGET.chains, TARGET.chain_len
    n, k = op.attrs["weight"].shape
    x = np.zeros((3, ti.k_words * L), np.int8)
    x[:, :k] = vals["x"]
    w = np.zeros((ti.n_tiles * P, ti.k_words * L), np.int8)
    w[:n, :k] = op.attrs["weight"]
    bias = np.zeros(ti.n_tiles * P, np.int64)
    bias[:n] = op.attrs["bias"]
    mult = np.zeros(ti.n_tiles * P, np.int64)
    mult[:n] = op.attrs["mult"]
    out = g8.requantize(g8.matmul(x, w), bias, mult, op.attrs["shift"], op.attrs["relu"])
    assert np.array_equal(out[:, :n], vals["linear"])
    assert not out[:, n:].any()


def test_tile_rejects_unfused(quantized):
    with pytest.raises(CompileError, match="run quantize and fuse first"):
        tile(quantized, TARGET)


# ------------------------------------------------------------------------------------ schedule

def test_schedule_exact_and_deterministic(fused, x3):
    t = tile(fused, TARGET)
    s1, s2 = schedule(t), schedule(t)
    assert s1.graph["schedule"] == s2.graph["schedule"]
    assert s1.graph["schedule"] == ["x", "linear", "linear_1", "linear_2", "output"]
    assert np.array_equal(run(t, _inputs(x3))["output"], run(s1, _inputs(x3))["output"])


# --------------------------------------------------------------------------------- memory plan

def test_memory_plan_exact(fused, planned, x3):
    assert np.array_equal(run(fused, _inputs(x3))["output"], run(planned, _inputs(x3))["output"])
    align = TARGET.beat_bytes // TARGET.chain_len
    for n in planned.nodes:
        m = op_of(planned, n).mem
        assert m.addr % align == 0 and m.span % align == 0
        assert m.span >= m.rows * m.words
    mx, m1 = op_of(planned, "x").mem, op_of(planned, "linear").mem
    assert (mx.rows, mx.words) == (3, 5) and (m1.rows, m1.words) == (3, 7)
    assert op_of(planned, "output").mem == op_of(planned, "linear_2").mem
    assert planned.graph["act_words_used"] <= TARGET.act_depth


def test_memory_reuses_dead_space(planned):
    # x dies after linear_1 reads it as residual; linear_2 can take its place.
    assert op_of(planned, "linear_2").mem.addr == op_of(planned, "x").mem.addr == 0


def _sched(g, target=TARGET):
    return schedule(tile(fuse(g), target))


def test_buffer_too_small(quantized):
    small = TileTarget(4, 8, 32, act_depth=40, weight_depth=64)
    with pytest.raises(CompileError) as e:
        memory_plan(_sched(quantized, small))
    msg = str(e.value)
    assert "needs 56 words" in msg and "act_depth is 40" in msg


def test_reshape_aliases_or_fails():
    class M(torch.nn.Module):
        def __init__(self, f):
            super().__init__()
            self.fc = torch.nn.Linear(f, f)

        def forward(self, x):
            return self.fc(x).reshape(x.shape[0] // 2, -1)

    torch.manual_seed(0)
    x = torch.randn(4, 16)  # 16 = 2 words of L=8: [4,16] -> [2,32] keeps the bytes
    q = quantize(from_module(M(16).eval(), example=x), x.numpy())
    g = memory_plan(_sched(q))
    check(g)
    (r,) = [n for n in g.nodes if op_of(g, n).kind == "reshape"]
    m, src = op_of(g, r).mem, op_of(g, op_of(g, r).inputs[0]).mem
    assert m.addr == src.addr and (m.rows, m.words) == (2, 4)
    assert np.array_equal(run(g, _inputs(x))["output"], run(q, _inputs(x))["output"])
    x = torch.randn(4, 12)  # 12 is not a multiple of L=8: rows are padded, bytes move
    q = quantize(from_module(M(12).eval(), example=x), x.numpy())
    with pytest.raises(CompileError, match="last dim 12 -> 24 changes the row layout"):
        memory_plan(_sched(q))


def test_first_fit_is_the_one_allocator():
    """memory_plan's allocator: live-at-once allocations never overlap, a dead one's words are
    reused, and allocations live for a whole program (the decoder's act plan) lie back to back
    in their order."""
    from hwflow.compiler.passes import first_fit

    spans = {"a": 4, "b": 2, "c": 3, "d": 4}
    ranges = {"a": (0, 1), "b": (1, 2), "c": (2, 3), "d": (3, 4)}
    addr = first_fit(spans, ranges)
    assert addr == {"a": 0, "b": 4, "c": 0, "d": 3}       # c and d reuse dead words
    for x in spans:
        for y in spans:
            live = ranges[x][0] <= ranges[y][1] and ranges[y][0] <= ranges[x][1]
            if x < y and live:
                assert addr[x] + spans[x] <= addr[y] or addr[y] + spans[y] <= addr[x]
    assert first_fit(spans, dict.fromkeys(spans, (0, 0))) == {"a": 0, "b": 4, "c": 6, "d": 9}
    # ties at the same first step go in ``order``
    assert first_fit(spans, dict.fromkeys(spans, (0, 0)), order="dcba") == {
        "d": 0, "c": 4, "b": 7, "a": 9}
