"""Fit the cycle model (:mod:`hwflow.mapping.cycles`) on RTL micro-runs of a board's engine.

``hwflow calibrate --board B`` builds the board's accelerator once in Verilator and runs, in one
simulator process per batch (:func:`hwflow.sim.runner.simulate_steps`), small programs
``[X, END]`` of one instruction ``X`` of every kind at several sizes (and ATTN at several POS
values), plus chains of empty LOAD/STORE instructions that expose the instruction-fetch and
per-run costs. Instructions run one at a time, in order, so a program's cycles are
``RUN + sum(fetch) + sum(exec)``, and the marginal cycles of ``X`` are exactly
``cycles([X, END]) - cycles([END])`` on the RTL, with no model in between.

The fit, all linear least squares (numpy):

1. program level: ``RUN`` and the fetch ``miss`` cost from the empty-instruction chains (the
   ``hit`` cost is confounded with every instruction's fixed cost, so it keeps its built-in
   value; with ``SB < 32`` every fetch misses and ``miss`` keeps its built-in value too);
2. per kind: the term values of :data:`hwflow.mapping.cycles.TERMS` on the instruction's own
   cycles (program cycles minus the fitted run and fetch costs and its read latencies), solved
   as the smallest change from the built-in values (terms a kind's fit points cannot tell
   apart keep their built-in split).

Held out: other sizes of every kind (the per-kind error is on the instruction's marginal
cycles) and whole programs (all the held-out instructions in a row; the tiny-llama,
tiny-bitnet and tiny-mamba decode and prefill programs at several positions; MLP programs in
int8 and mixed formats), whose total cycles are compared with
:func:`hwflow.mapping.cycles.predict`. A board's engine is fitted with state-space units added
(:func:`calibration_config`), so HADAMARD, CONV and SCAN are fitted with the rest.

The result is JSON (:func:`fit_cycle_model` returns it; :func:`write_fit` stores it):
``board``, ``config`` and ``config_digest`` (the engine fitted), ``read_latency``, ``date``,
``hwflow_version``, per kind ``params`` (the term values), ``terms``, ``fit`` and ``heldout``
points (features, measured and predicted cycles) and the held-out errors, and ``programs``
(the whole programs).
"""

from __future__ import annotations

import datetime
import json
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from hwflow.errors import HwflowError
from hwflow.hw.config import AccelConfig
from hwflow.hw.contract import conv_record_bytes, scan_record_bytes
from hwflow.hw.isa import (
    FLAG_GAMMA,
    FLAG_POS,
    FLAG_RELU2,
    INSTR_BYTES,
    Instr,
    Opcode,
)
from hwflow.mapping import cycles
from hwflow.mapping.linear import matmul, matmul_nbytes, plan_matmul, plan_tmatmul, tmatmul
from hwflow.mapping.weight_format import (
    LayerFormat,
    is_legal,
    ring_reserve,
)
from hwflow.steps import run_steps

__all__ = ["MicroRun", "micro_runs", "fit_cycle_model", "write_fit", "format_table",
           "calibration_config", "DEFAULT_BOARDS", "CALIB_SSM"]

#: Boards whose cycle-model fit lives in the repository (``benchmarks/fit_cycle_model.py``).
DEFAULT_BOARDS = ("u280", "kv260")
#: Micro-runs per simulator process: one progress step each.
BATCH = 24
#: Kinds the per-kind table lists, in order.
KINDS = ("LOAD", "STORE", "KVSTORE", "GATHER", "MATMUL", "VADD", "RMSNORM", "SILUMUL", "ROPE",
         "ATTN", "ABSQUANT", "TMATMUL", "HADAMARD", "CONV", "SCAN")


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass
class MicroRun:
    """One micro-program: ``instrs`` then END, run with POS = ``pos``.

    ``kind`` is the kind being measured (``None`` for the fetch/run-cost chains), ``role``
    ``"fit"`` or ``"heldout"``; ``cycles`` is filled in by the run.
    """

    name: str
    kind: str | None
    role: str
    instrs: list
    pos: int = 0
    prog_base: int = 0
    cycles: int | None = None


@dataclass
class _Layout:
    """Super-beat addresses of the shared data regions of the micro-run image (zero data: the
    units' cycles do not depend on the values)."""

    cfg: AccelConfig
    next_sb: int = 0
    regions: dict = field(default_factory=dict)

    def alloc(self, name: str, nbytes: int) -> int:
        sb = self.next_sb
        self.regions[name] = sb
        self.next_sb += max(1, _cdiv(nbytes, self.cfg.beat_bytes))
        return sb


# -- micro-programs ------------------------------------------------------------------------------

def _vector(op: Opcode, rows: int, n: int, extra: int, flags: int = 0, m_addr: int = 0,
            L: int = 16) -> Instr:
    nw = _cdiv(n, L)
    words = nw + extra
    kw = dict(a=0, out=rows * words + 8, rows=rows, n=n, words=words)
    if op == Opcode.RMSNORM:
        return Instr(op, shift=8, eps=1, mult_b=1, **kw)
    if op == Opcode.SILUMUL:
        return Instr(op, flags, shift=8, b=2 * (rows * words + 8), mult_b=1, **kw)
    return Instr(op, flags, g=2 * (rows * words + 8), m_addr=3 * (rows * words + 8) + nw,
                 **kw)


def _matmul_plan(cfg: AccelConfig, fmt: LayerFormat, K: int, N: int):
    """The plan of a ``K x N`` linear in format ``fmt`` (one of the engine's legal ones)."""
    # a zero weight (a zero-stride view) satisfies every N:M, so the plan is fmt's own
    plan = plan_matmul(f"MATMUL {fmt.label}", cfg, np.broadcast_to(np.int8(0), (N, K)),
                       _cdiv(K, cfg.chain_len), (fmt.n, fmt.m), fmt.wbits)
    if plan.fmt != fmt:
        raise ValueError(f"the engine does not run {fmt.label}; it planned {plan.fmt.label}")
    return plan


def _matmul(cfg: AccelConfig, plan, rows: int, wgt: int) -> Instr:
    kw = plan.k_words
    return matmul(plan, 8, wgt, 0, rows * kw + 8, rows, _cdiv(plan.n_out, cfg.chain_len))


#: The state-space units a board's calibration engine gets (:func:`calibration_config`): the
#: "tiny-mamba" example's states and taps (Mamba's 16 and 4), room for its two layers.
CALIB_SSM = {"ssm_states": 16, "conv_taps": 4}


def calibration_config(cfg: AccelConfig) -> AccelConfig:
    """The engine ``hwflow calibrate`` fits for a board whose engine is ``cfg``: ``cfg`` with
    state-space units (:data:`CALIB_SSM`; 40 beats of channels, Hadamard blocks to
    ``max(64, 4 L)``) where it has the transformer path, so that their instructions are fitted
    too. The units do not change the other instructions' cycles, and a fit applies to every
    engine of the same chains, chain length and ports (``mapping.cycles.stored_fit``), the
    board's own included."""
    if not cfg.transformer or cfg.ssm:
        return cfg
    from hwflow.mapping.decoder_sizing import scan_lanes

    L = cfg.chain_len
    return replace(cfg, **CALIB_SSM, ssm_channels=40 * L, conv_words=40,
                   hadamard_block=max(64, 4 * L), ssm_lanes=scan_lanes(L))


def micro_runs(cfg: AccelConfig) -> tuple[list, _Layout]:
    """The micro-programs for ``cfg`` and the data layout they address.

    Sizes are picked from the engine's parameters so that every operand fits the activation
    buffer (``act_depth`` words) and every MATMUL tile the weight ring; fit and held-out sizes
    differ. Kinds the engine does not have (no transformer units, no TLMM) are left out.
    """
    L, SB, P = cfg.chain_len, cfg.beat_bytes, cfg.chains
    wpb = max(1, SB // L)
    depth = cfg.act_depth
    lay = _Layout(cfg)
    runs: list[MicroRun] = []

    def add(kind, role, name, instrs, pos=0):
        runs.append(MicroRun(name, kind, role, list(instrs), pos))

    # fetch / run costs: chains of empty LOADs (no read), and STOREs (drop the fetched beat)
    slots = max(1, SB // INSTR_BYTES)
    nop_l, nop_s = Instr(Opcode.LOAD), Instr(Opcode.STORE)
    for k in range(0, 2 * slots + 3):
        add(None, "fit", f"nop x{k}", [nop_l] * k)
    for k in (1, 3):
        add(None, "fit", f"store-nop x{k}", [nop_s, nop_l] * k)

    # LOAD / STORE (plain and POS-relative), n a multiple of the super-beat
    scratch_words = min(depth // 2, 64 * wpb)
    scratch = lay.alloc("scratch", (scratch_words + 8 * wpb) * L)
    mults_fit = [m for m in (1, 2, 4, 8, 16, 40, 64) if m * wpb <= scratch_words]
    mults_held = [m for m in (3, 12, 24, 48) if m * wpb <= scratch_words]
    for op in (Opcode.LOAD, Opcode.STORE):
        for role, ms in (("fit", mults_fit), ("heldout", mults_held)):
            for m in ms:
                add(op.name, role, f"{op.name} n={m * wpb}", [Instr(op, ext=scratch, a=0,
                                                                      b=m * wpb)])
        if cfg.transformer:
            for role, m, pos in (("fit", 2, 1), ("fit", 16, 3), ("heldout", 5, 2)):
                if m * wpb <= scratch_words:
                    add(op.name, role, f"{op.name} POS n={m * wpb}",
                        [Instr(op, FLAG_POS, ext=scratch, a=0, b=m * wpb, pos_stride=1)], pos)

    # VADD
    for role, sizes in (("fit", ((1, 8), (4, 3), (16, 2), (2, 40), (8, 16))),
                        ("heldout", ((3, 5), (8, 10), (1, 64)))):
        for rows, words in sizes:
            if 3 * rows * words + 16 > depth:
                continue
            add("VADD", role, f"VADD {rows}x{words}w",
                [Instr(Opcode.VADD, shift=8, a=0, b=rows * words + 8,
                       out=2 * (rows * words + 8), rows=rows, n=words * L - 3, words=words,
                       mult_a=1, mult_b=1)])

    # MATMUL: the three regimes (compute-, fetch- and epilogue-bound), dense and N:M, int8/int4
    fmts = [f for f in (LayerFormat(), LayerFormat(2, 4), LayerFormat(1, 4), LayerFormat(1, 1, 4),
                        LayerFormat(2, 4, 4)) if is_legal(cfg, f)]
    # a seeded spread of GEMV and small-batch shapes (rows, k_words, N) in every legal format,
    # k_words up to what two tiles of the ring hold; each regime (fetch-, compute- and
    # epilogue-bound) gets fit points, and held-out shapes are drawn apart from them
    rng = np.random.default_rng(7)
    mm, wgt_bytes = [], 0
    want = {"fit": 28, "heldout": 16}
    for attempt in range(2000):
        role = "fit" if len([m for m in mm if m[0] == "fit"]) < want["fit"] else "heldout"
        if len([m for m in mm if m[0] == "heldout"]) >= want["heldout"]:
            break
        fmt = fmts[attempt % len(fmts)]
        kw_max = max(k for k in range(1, 257)
                     if k == 1 or 2 * ring_reserve(cfg, fmt, k) <= cfg.weight_depth)
        rows = int(rng.choice([1, 1, 2, 3, 4, 6, 8, 12, 16]))
        kw = int(rng.integers(1, min(kw_max, 64) + 1))
        N = int(rng.integers(1, 9)) * P * fmt.r - int(rng.integers(0, P))
        if 2 * ring_reserve(cfg, fmt, kw) > cfg.weight_depth or N < 1:
            continue
        if rows * kw + 8 + rows * _cdiv(N, L) > depth:
            continue
        plan = _matmul_plan(cfg, fmt, kw * L, N)
        mm.append((role, fmt, rows, kw * L, N, plan))
        wgt_bytes = max(wgt_bytes, matmul_nbytes(cfg, plan))
    wgt = lay.alloc("weights", wgt_bytes)
    for role, fmt, rows, K, N, plan in mm:
        add("MATMUL", role, f"MATMUL {rows}x{K}x{N} {fmt}", [_matmul(cfg, plan, rows, wgt)])

    # vector unit: RMSNORM, SILUMUL (and RELU2), ABSQUANT (and GAMMA)
    if cfg.vector_unit:
        v_fit = ((1, L, 0), (4, 3 * L + 5, 2), (1, 8 * L, 0), (2, 20 * L, 1), (8, 2 * L, 0))
        v_held = ((2, 7 * L + 3, 1), (5, 4 * L, 0), (1, 13 * L, 3))
        for op in (Opcode.RMSNORM, Opcode.SILUMUL, Opcode.ABSQUANT):
            flag = {Opcode.SILUMUL: FLAG_RELU2, Opcode.ABSQUANT: FLAG_GAMMA}.get(op, 0)
            for role, sizes in (("fit", v_fit), ("heldout", v_held)):
                for j, (rows, n, extra) in enumerate(sizes):
                    words = _cdiv(n, L) + extra
                    if 4 * (rows * words + 8) + words > depth:
                        continue
                    f = flag if j % 2 else 0
                    tag = f" {'RELU2' if f == FLAG_RELU2 else 'GAMMA' if f else ''}".rstrip()
                    add(op.name, role, f"{op.name} {rows}x{n}{tag}",
                        [_vector(op, rows, n, extra, f, L=L)])

    if cfg.transformer:
        # ROPE: (rows, heads, hd)
        for role, sizes in (("fit", ((1, 6, 20), (4, 2, 32), (2, 4, 64), (8, 1, 16))),
                            ("heldout", ((3, 3, 24), (5, 2, 40), (1, 8, 64)))):
            for rows, heads, hd in sizes:
                hdw = _cdiv(hd, L)
                words = heads * hdw
                csw = _cdiv(2 * hd, L)
                if rows * (words + csw) + 8 > depth:
                    continue
                add("ROPE", role, f"ROPE {rows}x{heads}x{hd}",
                    [Instr(Opcode.ROPE, a=0, cs=rows * words + 8, cs_words=csw, rows=rows,
                           heads=heads, hd=hd, head_stride=hdw * L, words=words)])

        # GATHER: (rows, n words / wpb)
        g_fit = ((1, 1), (4, 1), (8, 2), (16, 1), (2, 4))
        g_held = ((3, 2), (12, 1), (6, 3))
        g_rows = [r for r, _ in g_fit + g_held]
        if SB // 4 < 70:
            g_fit += ((SB // 4 + 3, 1),)       # more rows than ids in one super-beat
        ids = lay.alloc("ids", 4 * max(g_rows + [SB // 4 + 3]))
        table = lay.alloc("table", 4 * 4 * wpb * L)
        for role, sizes in (("fit", g_fit), ("heldout", g_held)):
            for rows, m in sizes:
                n = m * wpb
                if rows * n > depth:
                    continue
                add("GATHER", role, f"GATHER {rows}x{n}w",
                    [Instr(Opcode.GATHER, ext=table, a=0, n=n, rows=rows, ids=ids,
                           stride=_cdiv(n * L, SB), table_rows=4)])

        # ATTN: (slots, grp, hd_words, rows, pos, extra beats per position block); passes
        # this unit runs (slots | SB/L, slots * grp <= attn_heads)
        a_fit = ((1, 2, 1, 1, 0, 0), (1, 2, 2, 1, 20, 0), (2, 2, 2, 1, 40, 0),
                 (2, 3, 2, 4, 0, 0), (1, 1, 4, 2, 70, 0), (4, 1, 1, 1, 100, 0),
                 (2, 3, 2, 1, 15, 1), (2, 1, 2, 8, 30, 0), (2, 4, 1, 1, 60, 0),
                 (1, 4, 3, 2, 25, 0), (2, 1, 3, 1, 47, 1), (2, 1, 4, 1, 10, 0),
                 (1, 3, 1, 6, 3, 0), (4, 2, 1, 1, 20, 0), (1, 1, 2, 1, 130, 2),
                 (2, 3, 2, 1, 5, 0))
        a_held = ((2, 3, 2, 1, 33, 0), (1, 3, 2, 3, 50, 1), (2, 2, 1, 8, 7, 0),
                  (2, 1, 3, 1, 90, 0), (2, 3, 2, 1, 120, 0), (4, 2, 2, 2, 16, 0),
                  (1, 1, 1, 1, 64, 1))

        def runs_here(sizes):
            return [t for t in sizes if wpb % t[0] == 0 and t[0] * t[1] <= cfg.attn_heads]

        a_fit, a_held = runs_here(a_fit), runs_here(a_held)
        keys = max(p + r for *_, r, p, _x in a_fit + a_held)
        blocks = [_cdiv(sl * hdw, wpb) + x for sl, _, hdw, _, _, x in a_fit + a_held]
        kcache = lay.alloc("K", keys * max(blocks) * SB)
        vcache = lay.alloc("V", keys * max(blocks) * SB)
        for role, sizes in (("fit", a_fit), ("heldout", a_held)):
            for slots, grp, hdw, rows, pos, extra in sizes:
                lanes = slots * grp
                qw = lanes * hdw
                if 2 * rows * qw + 8 > depth:
                    continue
                add("ATTN", role, f"ATTN {slots}x{grp} hd{hdw}w rows{rows} pos{pos}+{extra}",
                    [Instr(Opcode.ATTN, ext=kcache, v_ext=vcache, a=0, out=rows * qw + 8,
                           q_words=qw, rows=rows, lanes=lanes, grp=grp, slots=slots,
                           hd_words=hdw, pos_sb=_cdiv(slots * hdw, wpb) + extra, smul=1,
                           omul=1, sshift=0)],
                    pos)
        # KVSTORE: (rows, slots, hd_words, extra beats per block, pos)
        for role, sizes in (("fit", ((1, 1, 1, 0, 0), (2, 2, 2, 0, 3), (4, 1, 3, 1, 1),
                                     (1, 2, 4, 0, 5), (8, 2, 1, 0, 0), (3, 1, 2, 2, 2))),
                            ("heldout", ((2, 1, 2, 0, 4), (5, 2, 2, 1, 1), (1, 1, 6, 0, 9)))):
            for rows, slots, hdw, extra, pos in sizes:
                if wpb % slots or rows * 2 * slots * hdw > scratch_words:
                    continue
                pst = _cdiv(slots * hdw, wpb) + extra
                if (pos + rows) * pst * wpb > scratch_words:
                    continue
                add("KVSTORE", role, f"KVSTORE {rows}x{slots}x{hdw}w+{extra} pos{pos}",
                    [Instr(Opcode.KVSTORE, FLAG_POS, ext=scratch, a=0, words=slots * hdw,
                           rows=rows, pos_stride=pst, slots=slots, hd_words=hdw)], pos)

    if cfg.tlmm:
        from hwflow.mapping.ternary_format import block_layout

        G, T, Q = cfg.tlmm_g, cfg.tlmm_t, cfg.tlmm_q
        # whole records (k_groups a multiple of T, n_out of Q): the zero block is then a
        # valid one (no padding group or channel, whose index must be ZERO_INDEX)
        t_fit = ((1, 3 * T, 8 * Q), (2, 6 * T, 16 * Q), (1, 20 * T, 32 * Q), (4, T, 4 * Q),
                 (1, T, 64 * Q))
        # held out: a layer of width >= 1024 (29 chunks of T groups, >= 1024 outputs) in decode
        # and in one pass of R rows (prefill), the lookup rate issue 15 asks of the engine
        wide = -(-1024 // Q) * Q
        t_held = ((1, 12 * T, 12 * Q), (3, 4 * T, 25 * Q), (2, 9 * T, 8 * Q),
                  (1, 29 * T, wide), (cfg.tlmm_rows, 29 * T, wide))
        shapes = [(r, kg, n) for r, kg, n in t_fit + t_held if n <= cfg.tlmm_acc_depth]
        tw = lay.alloc("tweights", max(block_layout(n, kg * G, G, T, Q, SB)["total_beats"]
                                       for _, kg, n in shapes) * SB)
        for role, sizes in (("fit", t_fit), ("heldout", t_held)):
            for rows, kg, n in sizes:
                xw, words = _cdiv(kg * G, L), _cdiv(n, L)
                if n > cfg.tlmm_acc_depth or rows * (xw + words) + 16 > depth:
                    continue
                tp = plan_tmatmul(f"TMATMUL {rows}x{kg}gx{n}", cfg, n, kg * G)
                add("TMATMUL", role, f"TMATMUL {rows}x{kg}gx{n}",
                    [tmatmul(tp, 8, tw, 0, xw, rows * xw + 8, rows, words,
                             rows * (xw + words) + 8)])
    if cfg.ssm:
        _ssm_runs(cfg, lay, add)
    # a held-out program of all held-out instructions one after another (fetch hits and misses
    # as in a real program), run at one POS
    mixed = [i for r in runs if r.role == "heldout" for i in r.instrs]
    runs.append(MicroRun(f"mixed held-out instructions ({len(mixed)}, pos=5)", "program",
                         "heldout", mixed, 5))
    return runs, lay


def _ssm_runs(cfg: AccelConfig, lay: _Layout, add) -> None:
    """HADAMARD, CONV and SCAN micro-runs (``hw/ssm_exec.py``) at sizes the engine's
    state-space units hold: ``(rows, n, extra words)``, HADAMARD also the block's ``lgb``; the
    parameter blocks are zero (the executors' cycles do not depend on the values)."""
    from hwflow.mapping.ssm_format import block_bytes

    L, SB, depth = cfg.chain_len, cfg.beat_bytes, cfg.act_depth
    lg_max = cfg.hadamard_block.bit_length() - 1
    lg_min = L.bit_length() - 1
    h_fit = ((1, 1 << lg_max, lg_max, 0), (4, 2 << lg_min, lg_min, 1), (2, 4 << lg_min,
             lg_min + 1, 0), (8, 1 << lg_max, lg_max, 2), (3, 2 << lg_max, lg_max - 1, 0))
    h_held = ((2, 3 << lg_min, lg_min, 1), (5, 1 << lg_max, lg_max, 0), (1, 4 << lg_max, lg_max,
              3))
    for role, sizes in (("fit", h_fit), ("heldout", h_held)):
        for rows, n, lgb, extra in sizes:
            words = _cdiv(n, L) + extra
            if lgb < lg_min or 2 * rows * words + 8 > depth:
                continue
            add("HADAMARD", role, f"HADAMARD {rows}x{n} block {1 << lgb}",
                [Instr(Opcode.HADAMARD, a=0, out=rows * words + 8, n=n, rows=rows, words=words,
                       shift=8, mult_b=1, lgb=lgb, obits=8 if rows % 2 else 4)])
    channels_conv = cfg.conv_words * L
    c_fit = ((1, 3 * L, 0), (4, 8 * L - 3, 1), (16, 2 * L, 0), (2, 20 * L, 2), (8, 5 * L + 1, 0),
             (1, channels_conv, 0))
    c_held = ((3, 6 * L, 1), (6, 11 * L - 5, 0), (1, 13 * L, 2))
    W = cfg.ssm_lanes            # a SCAN's channels: a multiple of W (partial beats too)
    s_fit = ((1, 3 * L, 0), (4, 8 * L - 3 * W, 1), (2, 20 * L, 0), (8, 2 * L + W, 2),
             (1, 40 * L, 0))
    s_held = ((3, 6 * L, 1), (2, 11 * L - 5 * W, 0), (1, 25 * L, 2))
    bcw = _cdiv(cfg.ssm_states, L)
    conv_rec, scan_rec = (conv_record_bytes(L, cfg.conv_taps),
                          scan_record_bytes(L, cfg.ssm_states))
    widest = max(n for _, n, _ in c_fit + c_held + s_fit + s_held)
    params = lay.alloc("ssm params", max(block_bytes(conv_rec, widest, L, SB),
                                         block_bytes(scan_rec, widest, L, SB)))
    for role, sizes in (("fit", c_fit), ("heldout", c_held)):
        for rows, n, extra in sizes:
            words = _cdiv(n, L) + extra
            if _cdiv(n, L) > cfg.conv_words or 2 * rows * words + 8 > depth:
                continue
            add("CONV", role, f"CONV {rows}x{n}",
                [Instr(Opcode.CONV, ext=params, a=0, out=rows * words + 8, n=n, rows=rows,
                       words=words, state=0, shift=8, mult_b=1, silu_shift=8)], pos=rows % 3)
    for role, sizes in (("fit", s_fit), ("heldout", s_held)):
        for rows, n, extra in sizes:
            words = _cdiv(n, L) + extra
            area = rows * words + 8
            if n > cfg.ssm_channels or 3 * area + 2 * rows * bcw + 8 > depth:
                continue
            add("SCAN", role, f"SCAN {rows}x{n}",
                [Instr(Opcode.SCAN, ext=params, a=0, dt=area, out=2 * area, b=3 * area,
                       c=3 * area + rows * bcw + 4, bc_words=bcw, n=n, rows=rows, words=words,
                       state=0, shift=8, bu_mult=1, bu_shift=8, y_mult=1, d_shift=8)],
                pos=rows % 2)


def _image(cfg: AccelConfig, runs: list, lay: _Layout) -> bytes:
    """Programs after the data regions, each from its own super-beat; sets ``prog_base``."""
    SB = cfg.beat_bytes
    sb = lay.next_sb
    progs = {}
    for r in runs:
        r.prog_base = sb
        code = b"".join(i.encode() for i in r.instrs + [Instr(Opcode.END)])
        progs[sb] = code
        sb += _cdiv(len(code), SB)
    img = bytearray(sb * SB)
    for base, code in progs.items():
        img[base * SB:base * SB + len(code)] = code
    return bytes(img)


# -- running -------------------------------------------------------------------------------------

def _simulate(cfg, verilog, image, steps, work_dir) -> list:
    """Cycles of each step (``SimError`` / ``HwflowError`` when a run fails)."""
    from hwflow.sim.runner import simulate_steps

    res = simulate_steps(cfg, verilog, image, steps, work_dir, timeout_cycles=2_000_000)
    out = []
    for k, r in enumerate(res.steps):
        if not r.done or r.error:
            raise HwflowError(f"calibration run {k} failed on the RTL (done={r.done}, "
                              f"ERROR={r.error}); see {work_dir}")
        out.append(int(r.cycles))
    if len(out) != len(steps):
        raise HwflowError(f"calibration batch stopped after {len(out)} of {len(steps)} runs; "
                          f"see {work_dir}")
    return out


@dataclass
class _Program:
    """A whole held-out program: its runs (prog_base, pos) on one image."""

    name: str
    image: bytes
    runs: list            # [(label, program, prog_base, pos)]


def _llm_programs(cfg: AccelConfig, example: str) -> _Program | None:
    """The tiny decoder's decode program at three positions and its smallest prefill bucket at
    two; None when it does not lower for this engine as it is (e.g. a TLMM engine too small)."""
    from hwflow.errors import HwflowError as _E
    from hwflow.llm_flow import DECODER_STEPS, DecoderJob
    from hwflow.mapping.errors import MappingError

    job = DecoderJob(example=example, max_context=48, cfg=cfg)
    try:
        lw = run_steps(job, DECODER_STEPS, select=("load", "quantize", "lower")).lw
    except (MappingError, _E, ValueError):
        return None
    if -(-len(lw.image) // cfg.beat_bytes) > 1 << 16:
        return None                 # would need a deeper memory model (another build)
    pre = lw.prefill[lw.buckets[0]]
    runs = [(f"decode pos={p}", lw.decode.program, lw.decode.prog_base, p) for p in (0, 17, 40)]
    runs += [(f"prefill{pre.rows} pos={p}", pre.program, pre.prog_base, p) for p in (0, 24)]
    return _Program(example, lw.image, runs)


def _mlp_program(cfg: AccelConfig, example: str, weights: str) -> _Program:
    """A bundled MLP example compiled for ``cfg`` (the compile flow's steps, without the
    build folder), as one run at POS 0."""
    from hwflow.flow import MLP_STEPS, MlpJob

    job = MlpJob(example=example, weights=weights, cfg=cfg)
    low = run_steps(job, MLP_STEPS, select=("load", "calibrate", "compile", "lower")).lowered
    return _Program(f"{example} ({weights})", low.image,
                    [("run", low.program, low.prog_base, 0)])


# -- fitting -------------------------------------------------------------------------------------

def _program_level(cfg: AccelConfig, runs: list, latency: int) -> dict:
    """Fit ``RUN.fixed`` and ``FETCH.miss`` (and the empty LOAD/STORE costs, discarded) on the
    chains; ``FETCH.hit`` keeps its built-in value."""
    hit = dict(cycles.TERMS["FETCH"])["hit"]
    fit_miss = cfg.beat_bytes >= INSTR_BYTES
    rows, y = [], []
    for r in runs:
        prog = r.instrs + [Instr(Opcode.END)]
        miss = sum(cycles.fetch_misses(prog, cfg))
        nl = sum(1 for i in r.instrs if i.op == Opcode.LOAD)
        ns = sum(1 for i in r.instrs if i.op == Opcode.STORE)
        target = r.cycles - (len(prog) - miss) * hit - miss * latency
        if fit_miss:
            rows.append([1, miss, nl, ns])
        else:
            target -= miss * dict(cycles.TERMS["FETCH"])["miss"]
            rows.append([1, nl, ns])
        y.append(target)
    sol = np.linalg.lstsq(np.array(rows, float), np.array(y, float), rcond=None)[0]
    out = {"RUN": {"fixed": float(sol[0])}, "FETCH": {"hit": hit}}
    out["FETCH"]["miss"] = float(sol[1]) if fit_miss else dict(cycles.TERMS["FETCH"])["miss"]
    return out


def _fit_kind(kind: str, pts: list) -> dict:
    """Least-squares term values of one kind: the smallest change from the built-in values
    that fits ``pts`` (``[(features, instruction cycles)]``)."""
    names = [t for t, _ in cycles.TERMS[kind]]
    base = dict(cycles.TERMS[kind])
    X = np.array([[f.get(t, 0) for t in names] for f, _ in pts], float)
    y = np.array([c - sum(base[t] * f.get(t, 0) for t in names) for f, c in pts], float)
    # scale the columns so that small fixed costs and large per-element slopes weigh alike
    scale = np.maximum(np.abs(X).max(axis=0), 1e-9)
    delta = np.linalg.lstsq(X / scale, y, rcond=None)[0] / scale
    return {t: round(float(base[t] + d), 4) for t, d in zip(names, delta, strict=True)}


def _pct(pred: float, meas: float) -> float:
    return 100.0 * (pred - meas) / meas if meas else 0.0


def fit_cycle_model(board: str, jobs: int = 1, work_dir=None, progress: bool = True,
                    boards_dir=None, cfg: AccelConfig | None = None, programs: bool = True,
                    runs_filter=None) -> dict:
    """Fit the cycle model of ``board``'s engine on the RTL; returns the fit JSON data.

    Parameters
    ----------
    board : str
        Board name (its YAML's engine, :func:`hwflow.mapping.accel_config.choose_config`); with
        ``cfg`` only the label of the result.
    jobs : int
        Simulator processes run side by side (batches of :data:`BATCH` micro-runs and the
        whole programs).
    work_dir : path-like, optional
        Folder for the simulator files (default: a temporary folder).
    progress : bool
        Show a tqdm progress bar.
    cfg : AccelConfig, optional
        Fit this engine instead of the board's default one (tests use a small one).
    programs : bool
        Also run the whole held-out programs (tiny-llama, tiny-bitnet, MLPs).
    runs_filter : callable, optional
        Keep only the micro-runs for which ``runs_filter(run)`` is true (tests).

    Raises
    ------
    HwflowError
        Unknown board, or an RTL run that failed.
    """
    from hwflow.boards import BoardError, load_board
    from hwflow.hw.top import generate_verilog
    from hwflow.rtl_cache import cached_verilog, check_cache_writable

    check_cache_writable()          # minutes of Verilator builds and runs go through the cache
    if cfg is None:
        from hwflow.mapping.accel_config import choose_config

        try:
            cfg = calibration_config(choose_config(load_board(board, boards_dir)))
        except BoardError as e:
            raise HwflowError(str(e)) from None
    latency = cycles.READ_LATENCY
    runs, lay = micro_runs(cfg)
    if runs_filter is not None:
        runs = [r for r in runs if r.kind is None or runs_filter(r)]
    image = _image(cfg, runs, lay)
    # the same cache entry as hwflow.flow.accelerator_verilog
    verilog = cached_verilog("", cfg.to_dict(), lambda: generate_verilog(cfg))
    whole = []
    if programs and cfg.transformer:
        whole += [p for p in (_llm_programs(cfg, "tiny-llama"),
                              _llm_programs(cfg, "tiny-bitnet"),
                              _llm_programs(cfg, "tiny-mamba") if cfg.ssm else None)
                  if p is not None]
    if programs:
        whole += [_mlp_program(cfg, "mlp", "int8"), _mlp_program(cfg, "mlp-mixed", "mixed")]
    own_tmp = tempfile.TemporaryDirectory() if work_dir is None else None
    root = Path(work_dir or own_tmp.name)
    batches = [runs[k:k + BATCH] for k in range(0, len(runs), BATCH)]
    tasks = [("micro", b) for b in batches] + [("program", p) for p in whole]

    # one Verilator build serves every batch: build it before the workers start
    from hwflow.sim.runner import build

    build(cfg, verilog)

    def work(idx_task):
        idx, (what, item) = idx_task
        wd = root / f"job{idx}"
        if what == "micro":
            steps = [{"prog_base": r.prog_base, "pos": r.pos} for r in item]
            for r, c in zip(item, _simulate(cfg, verilog, image, steps, wd), strict=True):
                r.cycles = c
            return None
        steps = [{"prog_base": base, "pos": pos} for _, _, base, pos in item.runs]
        return item, _simulate(cfg, verilog, item.image, steps, wd)

    results = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(tasks), desc=f"calibrate {board}", unit="batch")
    try:
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            for res in pool.map(work, enumerate(tasks)):
                if res is not None:
                    results.append(res)
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        if own_tmp is not None:
            own_tmp.cleanup()
    return _fit(board, cfg, runs, results, latency)


def _fit(board: str, cfg: AccelConfig, runs: list, results: list, latency: int) -> dict:
    prog_level = _program_level(cfg, [r for r in runs if r.kind is None], latency)
    base_cal = cycles.CycleFit(prog_level, latency, "fit")
    end = [Instr(Opcode.END)]
    end_cycles = {}
    for r in runs:
        if r.kind is None and not r.instrs:
            end_cycles[0] = r.cycles

    def own(r):
        """The instruction's own cycles: the run minus the fitted run and fetch costs and
        its read latencies."""
        p = cycles.predict(r.instrs + end, cfg, r.pos, base_cal)
        _, _, trips = cycles.features(r.instrs[0], cfg, r.pos, latency)
        return r.cycles - p["run_overhead"] - p["instruction_fetch"] - trips * latency

    params = dict(prog_level)
    kinds = {}
    for kind in KINDS:
        fit = [r for r in runs if r.kind == kind and r.role == "fit"]
        if not fit:
            continue
        pts = [(cycles.features(r.instrs[0], cfg, r.pos, latency)[1], own(r)) for r in fit]
        params[kind] = _fit_kind(kind, pts)
    cal = cycles.CycleFit(params, latency, "fit", cfg.digest())
    base_pred = cycles.predict(end, cfg, 0, cal)["total"]
    for kind in KINDS:
        mine = [r for r in runs if r.kind == kind]
        if not mine:
            continue
        entry = {"terms": [t for t, _ in cycles.TERMS[kind]], "params": params.get(kind),
                 "fit": [], "heldout": []}
        for r in mine:
            # model-free marginal cycles of the instruction in a straight-line program
            meas = r.cycles - end_cycles[0]
            pred = cycles.predict(r.instrs + end, cfg, r.pos, cal)["total"] - base_pred
            entry[r.role].append({"name": r.name, "pos": r.pos,
                                  "features": cycles.features(r.instrs[0], cfg, r.pos,
                                                              latency)[1],
                                  "rtl": meas, "predicted": pred,
                                  "error_pct": round(_pct(pred, meas), 3)})
        for role in ("fit", "heldout"):
            errs = [abs(p["error_pct"]) for p in entry[role]]
            entry[f"{role}_max_abs_error_pct"] = round(max(errs), 3) if errs else None
            entry[f"{role}_mean_abs_error_pct"] = round(sum(errs) / len(errs), 3) if errs \
                else None
        kinds[kind] = entry
    for k in ("RUN", "FETCH"):
        kinds[k] = {"terms": [t for t, _ in cycles.TERMS[k]], "params": params[k],
                    "fit_points": sum(1 for r in runs if r.kind is None)}
    progs = []
    for r in runs:
        if r.kind == "program":
            prog = r.instrs + end
            pred = cycles.predict(prog, cfg, r.pos, cal)["total"]
            progs.append({"program": r.name, "pos": r.pos, "instructions": len(prog),
                          "rtl": r.cycles, "predicted": pred,
                          "error_pct": round(_pct(pred, r.cycles), 3)})
    for p, cyc in results:
        for (label, prog, _, pos), c in zip(p.runs, cyc, strict=True):
            pred = cycles.predict(prog, cfg, pos, cal)["total"]
            progs.append({"program": f"{p.name} {label}".strip(), "pos": pos,
                          "instructions": len(prog), "rtl": c, "predicted": pred,
                          "error_pct": round(_pct(pred, c), 3)})
    try:
        ver = version("hwflow")
    except PackageNotFoundError:
        ver = "unknown"
    return {
        "board": board, "config": cfg.to_dict(), "config_digest": cfg.digest(),
        "read_latency": latency,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "hwflow_version": ver, "kinds": kinds, "programs": progs,
        "programs_max_abs_error_pct": round(max((abs(p["error_pct"]) for p in progs),
                                                default=0.0), 3),
    }


def write_fit(data: dict, path) -> Path:
    """Write ``data`` as JSON to ``path`` (atomically: a temporary file, then a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")
    tmp.replace(path)
    cycles._stored.cache_clear()
    return path


def format_table(data: dict) -> str:
    """The per-kind and per-program error table ``hwflow calibrate`` prints."""
    lines = [f"cycle model of {data['board']} (config {data['config_digest']}), held-out "
             "error on the instruction's own cycles",
             f"{'kind':<10}{'fit':>5}{'held-out':>10}{'max |err| %':>13}{'mean |err| %':>14}"]
    for kind in KINDS:
        e = data["kinds"].get(kind)
        if not e:
            continue
        mx, mean = e["heldout_max_abs_error_pct"], e["heldout_mean_abs_error_pct"]
        lines.append(f"{kind:<10}{len(e['fit']):>5}{len(e['heldout']):>10}"
                     f"{'-' if mx is None else f'{mx:.2f}':>13}"
                     f"{'-' if mean is None else f'{mean:.2f}':>14}")
    if data["programs"]:
        lines.append("")
        lines.append(f"{'whole program (held out)':<36}{'RTL':>10}{'predicted':>11}{'err %':>8}")
        for p in data["programs"]:
            lines.append(f"{p['program']:<36}{p['rtl']:>10}{p['predicted']:>11}"
                         f"{p['error_pct']:>+8.2f}")
    return "\n".join(lines)
