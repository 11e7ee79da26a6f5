"""The hardware contract, in plain Python: what the RTL, the mapper, the cycle and resource
models, the ISA model and the host runtime all read.

The contract is three modules of ``hwflow.hw`` that import neither Amaranth nor anything but
each other (tests/test_layering.py checks it), so that a shape-only prediction and the host
runtime never load the HDL (tests/hwflow/test_no_amaranth.py):

- :mod:`hwflow.hw.isa`: the instruction set (opcodes, flags, the one table of fields);
- :mod:`hwflow.hw.config`: :class:`~hwflow.hw.config.AccelConfig`, the parameters the RTL
  depends on;
- this module: the control registers, the Vitis kernel's register map, and the hardware
  constants and sizing rules the models read. The RTL modules import each of them from here
  and define none of them again.
"""

from __future__ import annotations

from .config import AccelConfig

__all__ = [
    "REG", "AP_START", "AP_DONE", "AP_IDLE", "REGISTER_DOC", "KERNEL_REGISTER_DOC",
    "register_rows", "KERNEL_NAME", "KERNEL_REG", "CONTROL_RANGE", "MAX_PORTS", "mem_arg_offset",
    "RESULT_FIFO_DEPTH", "MAX_EPILOGUE_LANES", "epilogue_lanes", "INT4_GROUP", "int4_capable",
    "RING_BURST_BEATS", "ATTN_BLOCK", "rope_pairs_per_step", "rope_head_steps",
    "FULL_TABLE_MAX", "table_entries", "MAX_TLMM_EPILOGUE_LANES", "tlmm_epilogue_lanes",
    "tlmm_passes", "conv_record_bytes", "scan_record_bytes", "record_slots",
]

# --- control registers (hw.axi_lite.ControlRegisters; docs/architecture.md, "Control registers")

REG = {
    "AP_CTRL": 0x00,
    "PROG_BASE": 0x10,
    "CYCLES_LO": 0x18, "CYCLES_HI": 0x1C,
    "MPE_BUSY_LO": 0x20, "MPE_BUSY_HI": 0x24,
    "RETIRED": 0x28,
    "ERROR": 0x2C,
    "POS": 0x200,
    "TLMM_BUSY_LO": 0x208, "TLMM_BUSY_HI": 0x20C,
}
#: AP_CTRL bits: ap_start (write 1 while idle), ap_done (set by the run's end), ap_idle.
AP_START, AP_DONE, AP_IDLE = 0x1, 0x2, 0x4
#: What each accelerator register holds: name -> (access, meaning), in :data:`REG`'s order; a
#: register of two words (``NAME_LO``/``NAME_HI``) is one entry ``NAME``. The documentation's
#: tables are rendered from it (docs/gen_isa_table.py, the Vitis/Vivado projects' README).
REGISTER_DOC = {
    "AP_CTRL": ("RW", "bit0 ap_start (write 1 to start; reads 1 while running), bit1 ap_done "
                      "(set at END, cleared by the next start), bit2 ap_idle"),
    "PROG_BASE": ("RW", "super-beat address of the first instruction"),
    "CYCLES": ("RO", "clock cycles from start to done of the last run"),
    "MPE_BUSY": ("RO", "cycles in which the matrix engine accepted a k-group (2·P·L MAC slots: "
                       "a row pair)"),
    "RETIRED": ("RO", "instructions retired in the last run"),
    "ERROR": ("RO", "0 = ok; 1 = illegal opcode; 2 = illegal MATMUL: a mode this engine does "
                    "not run (`lgm`/`lgr` outside \"Legal modes\" or with `M ∤ L`, `r ∤ G`; "
                    "sparse without `sparse`; INT4 without `int4` or `2L ∤ 32`), `k_words` = "
                    "0, or a tile reservation larger than the ring (`tile_mem_rows · (1 or 2) "
                    "> D`). The run stops before the instruction (not retired) and ap_done is "
                    "set"),
    "POS": ("RW", "sequence position of the run's first activation row (\"Runtime "
                  "register and program sharing\")"),
    "TLMM_BUSY": ("RO", "cycles in which the TLMM engine did its `T·Q` lookups (0 without "
                        "one; \"Ternary path\")"),
}

# --- Vitis RTL kernel (hw.vitis_kernel.VitisKernel; its module docstring has the full map)

KERNEL_NAME = "hwflow_kernel"
CONTROL_RANGE = 0x1000          # 12-bit AXI4-Lite address
KERNEL_REG = {"AP_CTRL": 0x00, "GIE": 0x04, "IER": 0x08, "ISR": 0x0C, "PROG_BASE": 0x10,
              "AXI_ERROR": 0x14, "MEM": 0x30, "POS": 0x200, "TLMM_BUSY_LO": 0x208,
              "TLMM_BUSY_HI": 0x20C}
#: The kernel's own registers (:data:`KERNEL_REG`, beside the accelerator's): as
#: :data:`REGISTER_DOC`; AP_CTRL's done and idle wait for the kernel's write responses.
KERNEL_REGISTER_DOC = {
    "AP_CTRL": ("RW", "bit0 ap_start, bit1 ap_done, bit2 ap_idle, bit3 ap_ready; done/idle "
                      "wait for every write response"),
    "GIE": ("RW", "bit0 global interrupt enable"),
    "IER": ("RW", "bit0 ap_done interrupt enable"),
    "ISR": ("RW", "bit0 ap_done interrupt pending (write 1 to toggle/clear)"),
    "AXI_ERROR": ("RO", "bit j: master j got SLVERR/DECERR"),
}
#: The MEM{j} pointers must stay below POS (0x200): at most 58 ports.
MAX_PORTS = (KERNEL_REG["POS"] - KERNEL_REG["MEM"]) // 8


def mem_arg_offset(j: int) -> int:
    """AXI4-Lite offset of the 64-bit buffer pointer of port ``j``."""
    return KERNEL_REG["MEM"] + 8 * j


def register_rows(regs: dict, doc: dict, extra=()) -> list[tuple[str, str, str, str]]:
    """The rows ``(offset, name, access, meaning)`` of a register table in address order.

    Parameters
    ----------
    regs : dict
        Name -> byte offset (:data:`REG`, or it merged with :data:`KERNEL_REG`); a two-word
        register is ``NAME_LO`` and ``NAME_HI``, written ``0xLO/0xHI``.
    doc : dict
        Name -> (access, meaning) of every register listed (:data:`REGISTER_DOC`, ...).
    extra : iterable of (offset int, offset text, name, access, meaning)
        Rows that are not in ``regs`` (the kernel's MEM{j} pointers).

    Raises
    ------
    KeyError
        A documented register has no offset.
    """
    def offset(name):
        if name in regs:
            return regs[name], f"0x{regs[name]:02X}"
        lo, hi = regs[f"{name}_LO"], regs[f"{name}_HI"]
        return lo, f"0x{lo:02X}/0x{hi:02X}"

    rows = [(*offset(n), n, a, m) for n, (a, m) in doc.items()] + list(extra)
    return [r[1:] for r in sorted(rows)]


# --- matrix engine (hw.matrix_engine, hw.sequencer, hw.weight_fill, hw.buffers)

# Results the engine can hold: finished (in the FIFO) plus in flight (last group entered, result
# not yet out). The output sequencer drains one result per P (+ a few) cycles, so with
# k_words >= P the FIFO never holds more than 1-2; 4 also covers short dot products well enough
# (they are bound by the epilogue's one element per cycle anyway).
RESULT_FIFO_DEPTH = 4

#: Most epilogues working side by side. A row pair's result is ``2*r*P`` elements every
#: ``k_words`` cycles (up to 128 per 64 cycles at P = 16, 1:4, K = 1024): one element per cycle
#: would bound short dot products; four cost 12 DSP slices.
MAX_EPILOGUE_LANES = 4


def epilogue_lanes(cfg: AccelConfig) -> int:
    """E, elements the output sequencer requantizes per cycle: the largest power of two up to
    :data:`MAX_EPILOGUE_LANES` that divides both P and L (a group of E consecutive channels of a
    tile then lies in one activation word)."""
    e = 1
    while e < MAX_EPILOGUE_LANES and cfg.chains % (2 * e) == 0 and cfg.chain_len % (2 * e) == 0:
        e *= 2
    return e


#: Weights per int4 scale group along K (``golden.int4.GROUP``).
INT4_GROUP = 32


def int4_capable(cfg: AccelConfig) -> bool:
    """The int4 path is built: ``cfg.int4`` and a value row's two words lie in one scale group
    (``2L | 32``)."""
    return cfg.int4 and INT4_GROUP % (2 * cfg.chain_len) == 0


# Read bursts of the weight prefetcher. 16 super-beats per request keep two requests in flight
# within a 32-cycle memory latency, so the fetcher streams one super-beat per cycle.
RING_BURST_BEATS = 16
#: Read requests the read arbiter (hw.mem_port.ReadArbiter) keeps in flight: 64 requests of
#: one beat each still cover twice the 32-cycle read latency of the simulated memory.
READS_IN_FLIGHT = 64
#: Beats the weight ring may have in flight while it streams ahead of its MATMUL (the
#: arbiter's requester 1 under ``bg_limit``): the memory answers in order, so an instruction's
#: own read waits behind these. 48 = the 32-cycle read latency at a beat per cycle and one
#: 16-beat burst: the ring streams at full rate (with 32 it would idle 16 cycles in every 48)
#: and another read waits about one burst. A request longer than this still goes when none is
#: in flight.
BG_AHEAD_BEATS = 48

# --- attention and vector units (hw.attention, hw.sfu)

#: Keys per online-softmax block: the score buffers' depth (golden.llm.ATTN_BLOCK).
ATTN_BLOCK = 16


def rope_pairs_per_step(L: int, V: int) -> int:
    """Most ROPE pairs one step takes: ``min(V, L/2)`` (a word holds ``L/2`` int16 cos)."""
    return min(V, L // 2)


def rope_head_steps(L: int, V: int, hd: int, offset: int) -> int:
    """ROPE steps (four buffer reads each) of one head of ``hd`` bytes at byte ``offset`` of a
    word (any byte address; only ``offset % L`` matters) on ``V`` lanes of ``L``-byte words.

    Greedy, as the sequencer: from pair ``k``, a step takes ``P = min(Vr, half - k)`` pairs
    (``Vr`` = :func:`rope_pairs_per_step`), fewer where one of its four groups would cross a
    word: the x1 bytes at ``offset + k``, the x2 bytes ``half`` later, the int16 cos at table
    byte ``2k`` and sin at ``hd + 2k`` (the table row starts a word). ``half / Vr`` steps when
    ``offset`` and ``half`` are multiples of ``Vr``; ``half`` steps at ``V = 1``.
    """
    half, vr = hd // 2, rope_pairs_per_step(L, V)
    if vr == 1:
        return half
    k = steps = 0
    while k < half:
        p1 = offset + k
        k += min(vr, half - k, L - p1 % L, L - (p1 + half) % L, (L - 2 * k % L) // 2,
                 (L - (hd + 2 * k) % L) // 2)
        steps += 1
    return steps


# --- ternary lookup engine (hw.tlmm)

#: Deepest table stored whole: a 32-deep LUT-RAM holds 3**G = 9 or 27 entries as cheaply as 14.
FULL_TABLE_MAX = 32


def table_entries(G: int) -> int:
    """Entries the engine stores per table: all ``3**G`` when they fit a 32-deep LUT-RAM (G = 2,
    3), else the half ``H = (3**G + 1) / 2`` (G = 4: 41 fit a 64-deep RAM, 81 would need 128)
    with the mirrored half read as ``-entry(3**G - 1 - e)``. Also the build cycles per chunk."""
    E = 3 ** G
    return E if E <= FULL_TABLE_MAX else (E + 1) // 2


#: Most outputs the TLMM epilogue requantizes per cycle (4 DSP48E2 each). Four take a
#: 4096-output row's epilogue from 4096 cycles to 1024 (against 512 lookup records per chunk
#: at Q = 8) for 16 DSP slices.
MAX_TLMM_EPILOGUE_LANES = 4


def tlmm_epilogue_lanes(L: int, Q: int, SB: int) -> int:
    """E, outputs the TLMM epilogue writes per cycle: the largest power of two up to
    :data:`MAX_TLMM_EPILOGUE_LANES` that divides L, Q and ``SB/8`` (E consecutive outputs then
    lie in one activation word, one accumulator entry and one parameter-memory entry)."""
    e = 1
    while (e < MAX_TLMM_EPILOGUE_LANES and L % (2 * e) == 0 and Q % (2 * e) == 0
           and (SB // 8) % (2 * e) == 0):
        e *= 2
    return e


def tlmm_passes(rows: int, cfg: AccelConfig) -> tuple[int, int]:
    """``(groups, passes)`` of a TMATMUL of ``rows`` rows on ``cfg``'s TLMM engine: groups of up
    to ``tlmm_passes * tlmm_rows`` rows each fetch the index records once; passes of up to
    ``tlmm_rows`` rows each look every record up once (one TLMM_BUSY cycle a record)."""
    R, GR = cfg.tlmm_rows, cfg.tlmm_rows * cfg.tlmm_passes
    full, rest = divmod(rows, GR)
    return full + (rest > 0), full * cfg.tlmm_passes + -(-rest // R)


# --- state-space parameter records (docs/architecture.md, "State-space path") ----------------

def conv_record_bytes(L: int, taps: int) -> int:
    """Bytes of one beat's CONV record: ``L * taps`` int8 taps, ``L`` int32 biases, ``L`` u16
    multipliers."""
    return L * (taps + 6)


def scan_record_bytes(L: int, states: int) -> int:
    """Bytes of one beat's SCAN record: ``L * states`` u16 decay-rate codes, ``L`` int32 D
    multipliers."""
    return L * (2 * states + 4)


def record_slots(record: int, SB: int) -> tuple[int, int]:
    """``(records per super-beat, super-beats per record)`` of ``record``-byte records: no
    record straddles a super-beat, so an executor picks one out of whole super-beats."""
    return (SB // record, 1) if record <= SB else (1, -(-record // SB))
