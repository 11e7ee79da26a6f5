"""State-space unit: one token of Mamba's selective scan (``golden.ssm.scan_step``), one channel
a cycle with all its ``S`` states in parallel, the int32 state kept on chip.

For every channel ``c`` of a token, with the token's ``b``, ``c`` (``S`` int8 each) and
multipliers held on ``token`` (``golden.ssm`` for the formats)::

    decay[s] = exp2_neg(round(dt * a[s] >> 12))                     Q15, the exp2 ROM
    h'[s]    = sat32(round(decay[s] * h[s] >> 15) + round(dt * u * b[s] * bu_mult >> bu_shift))
    y        = sat8(round(sum_s h'[s] * c[s] * y_mult >> y_shift) + round(u * d_mult >> d_shift))

The state memory holds ``channels`` words of ``S`` int32; ``h`` is read when a channel enters
and ``h'`` written back four cycles later (a read in that cycle sees it), so a channel may return
(the next token) no sooner than ``HAZARD`` = 4 channels later: every model has far more inner
channels than that (the lowering is to check ``d_inner >= HAZARD``). ``zero`` on a channel
reads its state as 0 (a sequence's first token).

The pipeline moves as a whole (the output register is free or being taken), one channel a
cycle: ``LATENCY`` cycles from a channel's acceptance to its ``y`` on ``o``. Widths are golden's
exactly: ``dt * a`` 32 bits, the decay 16, ``decay * h`` 48, ``dt * u * b * bu_mult`` 48, the
``S`` products ``h' * c`` 40 and their sum ``40 + log2 S``, its product with ``y_mult`` 61.
"""

from __future__ import annotations

import math

from amaranth import Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from .attention import EXP2_ROM

__all__ = ["ScanUnit", "channel_layout", "token_layout", "HAZARD", "DT_FRAC", "A_FRAC",
           "DECAY_FRAC", "EXP2_FRAC", "SOFTPLUS_ROM"]

# The formats of golden.ssm (tests/hw/test_ssm.py checks they are golden's): dt at 2**-12, the
# decay-rate codes at 2**-8, the decay in Q15, the exp2 ROM's exponent in 1/256 steps.
DT_FRAC, A_FRAC, DECAY_FRAC, EXP2_FRAC = 12, 8, 15, 8

#: ``dt`` of an int8 dt-projection output ``v``: ``SOFTPLUS_ROM[v + 128] = round(softplus(v / 16)
#: * 2**DT_FRAC)``, golden.ssm.SOFTPLUS_LUT's formula (the tests compare the two).
SOFTPLUS_ROM = [int(round(math.log1p(math.exp(v / 16)) * (1 << DT_FRAC))) for v in range(-128, 128)]

#: A channel's state is written back this many channels after it was read.
HAZARD = 4
_DECAY_SHIFT = DT_FRAC + A_FRAC - EXP2_FRAC
_INT32 = (-(1 << 31), (1 << 31) - 1)


def token_layout(states: int) -> data.StructLayout:
    """The token's operands, constant while its channels are inside."""
    return data.StructLayout({
        "b": data.ArrayLayout(signed(8), states), "c": data.ArrayLayout(signed(8), states),
        "bu_mult": unsigned(16), "bu_shift": unsigned(6),
        "y_mult": unsigned(16), "y_shift": unsigned(6), "d_shift": unsigned(6),
    })


def channel_layout(states: int, channels: int) -> data.StructLayout:
    """One channel of a token: its place in the state memory, ``dt``, ``u``, the D-skip
    multiplier (signed, magnitude in 16 bits), the decay-rate codes of its states, and ``zero``."""
    return data.StructLayout({
        "chan": unsigned(max(1, (channels - 1).bit_length())),
        "dt": unsigned(16), "u": signed(8), "d_mult": signed(17),
        "a": data.ArrayLayout(unsigned(16), states), "zero": 1,
    })


def _round_shift(m: Module, v, shift, name: str) -> Signal:
    """``(v + 2**(shift-1)) >> shift`` (``v`` at shift 0), arithmetic, as a new signal: the sum
    is formed at full width (a rounding term of up to 2**46 on a narrow ``v``), the result fits
    ``len(v) + 1`` bits."""
    out = Signal(signed(len(v) + 1), name=name)
    rnd = Mux(shift == 0, 0, (Const(1, 48) << shift) >> 1)
    m.d.comb += out.eq((v + rnd) >> shift)
    return out


class ScanUnit(wiring.Component):
    """The selective scan of one token, one channel a cycle (module docstring).

    Parameters
    ----------
    states : int
        ``S`` = ``d_state``: states updated in parallel.
    channels : int
        Depth of the state memory (``d_inner`` of the largest layer it serves).

    Attributes
    ----------
    token : in, :func:`token_layout`
    i : stream of :func:`channel_layout`
    o : stream of signed 8: ``y`` of each channel, in order
    """

    LATENCY = 8

    def __init__(self, states: int, channels: int, uram: bool = False):
        self.states, self.channels, self.uram = states, channels, uram
        super().__init__({
            "token": In(token_layout(states)),
            "i": In(stream.Signature(channel_layout(states, channels))),
            "o": Out(stream.Signature(signed(8))),
        })

    def elaborate(self, platform):
        m = Module()
        S, tok = self.states, self.token
        m.submodules.hmem = hmem = memory.Memory(
            shape=data.ArrayLayout(signed(32), S), depth=self.channels, init=[],
            attrs={"ram_style": "ultra"} if self.uram else None)
        h_wr = hmem.write_port()
        h_rd = hmem.read_port(transparent_for=(h_wr,))     # a write-back read in its cycle

        en = Signal()
        m.d.comb += [en.eq(~self.o.valid | self.o.ready), self.i.ready.eq(en),
                     h_rd.en.eq(en), h_rd.addr.eq(self.i.payload.chan)]

        def stage(name, shape, value):
            r = Signal(shape, name=name)
            with m.If(en):
                m.d.sync += r.eq(value)
            return r

        p0 = self.i.payload
        # S1: the channel registered, its state read
        v1, p1 = stage("v1", 1, self.i.valid), stage("p1", p0.shape(), p0)
        # S2: dt * a[s], dt * u; the state (0 on a first token)
        v2, p2 = stage("v2", 1, v1), stage("p2", p0.shape(), p1)
        h2 = [stage(f"h2_{s}", signed(32), Mux(p1.zero, 0, h_rd.data[s])) for s in range(S)]
        dta2 = [stage(f"dta2_{s}", unsigned(32), p1.dt * p1.a[s]) for s in range(S)]
        dtu2 = stage("dtu2", signed(25), p1.dt * p1.u)
        # S3: the decay from the exp2 ROM; dt * u * b[s]
        v3, p3 = stage("v3", 1, v2), stage("p3", p0.shape(), p2)
        h3 = [stage(f"h3_{s}", signed(32), h2[s]) for s in range(S)]
        dec3, dtub3 = [], []
        for s in range(S):
            e = _round_shift(m, dta2[s], _DECAY_SHIFT, f"e_{s}")        # >= 0, 21 bits
            rom = memory.Memory(shape=unsigned(16), depth=256, init=EXP2_ROM)
            m.submodules[f"exp2_{s}"] = rom
            rp = rom.read_port(domain="comb")
            n = e >> EXP2_FRAC
            m.d.comb += rp.addr.eq(e[:EXP2_FRAC])
            dec3.append(stage(f"dec3_{s}", unsigned(16), Mux(n < 16, rp.data >> n[:4], 0)))
            dtub3.append(stage(f"dtub3_{s}", signed(33), dtu2 * tok.b[s]))
        # S4: the two terms of h', rounded
        v4, p4 = stage("v4", 1, v3), stage("p4", p0.shape(), p3)
        dh4 = [stage(f"dh4_{s}", signed(34), _round_shift(m, dec3[s] * h3[s], DECAY_FRAC,
                                                          f"dh_{s}")) for s in range(S)]
        dbu4 = [stage(f"dbu4_{s}", signed(50),
                      _round_shift(m, dtub3[s] * tok.bu_mult, tok.bu_shift, f"dbu_{s}"))
                for s in range(S)]
        # S5: h' saturated to int32, written back
        v5, p5 = stage("v5", 1, v4), stage("p5", p0.shape(), p4)
        hn5 = []
        for s in range(S):
            t = Signal(signed(51), name=f"t_{s}")
            sat = Signal(signed(32), name=f"hsat_{s}")
            m.d.comb += [t.eq(dh4[s] + dbu4[s]),
                         sat.eq(Mux(t > _INT32[1], _INT32[1], Mux(t < _INT32[0], _INT32[0], t))),
                         h_wr.data[s].eq(sat)]
            hn5.append(stage(f"hn5_{s}", signed(32), sat))
        m.d.comb += [h_wr.en.eq(en & v4), h_wr.addr.eq(p4.chan)]
        # S6: h' * c; the D skip
        v6 = stage("v6", 1, v5)
        hc6 = [stage(f"hc6_{s}", signed(40), hn5[s] * tok.c[s]) for s in range(S)]
        ud6 = stage("ud6", signed(26), _round_shift(m, p5.u * p5.d_mult, tok.d_shift, "ud"))
        # S7: the sum over the states
        v7 = stage("v7", 1, v6)
        acc7 = stage("acc7", signed(40 + S.bit_length()), sum(hc6))
        ud7 = stage("ud7", signed(26), ud6)
        # S8 (the output register): y
        y = Signal(signed(64))
        m.d.comb += y.eq(_round_shift(m, acc7 * tok.y_mult, tok.y_shift, "yr") + ud7)
        with m.If(en):
            m.d.sync += [self.o.valid.eq(v7),
                         self.o.payload.eq(Mux(y > 127, 127, Mux(y < -128, -128, y)))]
        return m
