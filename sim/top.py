"""Verilog text of the simulation top ``hwflow_sim_top``: the accelerator plus NP memory models.

``hwflow_sim_top`` instantiates ``hwflow_accel`` (ports as in docs/architecture.md) and one
``ext_memory`` (``sim/rtl/ext_memory.v``) per memory port. cocotb sees only what it needs:

* ``clk``, ``rst``, the AXI4-Lite ``ctrl__*`` signals (same names as on ``hwflow_accel``), ``irq``;
* the read-back and host-write controls shared by all memory models: ``dump``, ``poke``,
  ``dump_id[7:0]``, ``dump_lo[31:0]``, ``dump_hi[31:0]`` (beat range, inclusive; ``poke`` loads
  the range from ``<prefix>.w<dump_id>.hex``, see ``sim/rtl/ext_memory.v``);
* status: ``mem_oob`` (any port saw an access beyond its depth), ``mem_rd_beats`` and
  ``mem_wr_beats`` (beats of port 0; every access covers all ports alike);
* traffic counters (docs/architecture.md, "Memory traffic"): :data:`TRAFFIC_RANGES` super-beat
  ranges ``[lo, hi)`` with a category index each, written while ``tr_we`` is high at a clock edge
  (``tr_idx[2:0]``, ``tr_lo[31:0]``, ``tr_hi[31:0]``, ``tr_cat[2:0]``; an empty range, lo >= hi,
  matches nothing). Port 0's accepted read requests add their ``len`` beats to the read counter
  of the category of the first range holding their start address, its accepted write beats add
  one to the write counter (category :data:`TRAFFIC_OTHER` when no range holds the address).
  ``tr_rd[512]`` / ``tr_wr[512]``: eight 64-bit counters, category 0 in the low bits; they count
  from reset.
"""

from __future__ import annotations

from pathlib import Path

from hwflow.hw.config import AccelConfig

__all__ = ["TOP_NAME", "CTRL_PORTS", "EXT_MEMORY_V", "sim_top_verilog", "default_mem_depth",
           "TRAFFIC_RANGES", "TRAFFIC_CATEGORIES", "TRAFFIC_OTHER"]

TOP_NAME = "hwflow_sim_top"
EXT_MEMORY_V = Path(__file__).parent / "rtl" / "ext_memory.v"

#: Address ranges the traffic counters classify by.
TRAFFIC_RANGES = 8
#: Category indices of the traffic counters (docs/architecture.md, "Memory traffic").
TRAFFIC_CATEGORIES = ("weights", "kv", "io", "activations", "program")
#: Counter of accesses outside every range.
TRAFFIC_OTHER = 7

# AXI4-Lite slave of hwflow_accel: (name, direction seen from the accelerator, width).
CTRL_PORTS = (
    ("awvalid", "input", 1), ("awready", "output", 1), ("awaddr", "input", 12),
    ("wvalid", "input", 1), ("wready", "output", 1), ("wdata", "input", 32),
    ("wstrb", "input", 4), ("bvalid", "output", 1), ("bready", "input", 1),
    ("bresp", "output", 2), ("arvalid", "input", 1), ("arready", "output", 1),
    ("araddr", "input", 12), ("rvalid", "output", 1), ("rready", "input", 1),
    ("rdata", "output", 32), ("rresp", "output", 2),
)


def default_mem_depth(cfg: AccelConfig, image_bytes: int = 0) -> int:
    """Beats per port of the memory models: a power of two >= 2**16 that holds the image.

    2**16 beats a port is 16 MiB of image for SB = 256 B, and costs 2 MiB a port of simulator
    memory for W = 32 B; rounding to powers of two keeps the number of cached builds small.
    """
    need = max(1, -(-image_bytes // cfg.beat_bytes))
    depth = 1 << 16
    while depth < need:
        depth <<= 1
    if need > (1 << cfg.addr_bits):
        raise ValueError(f"{need} super-beats exceed the {cfg.addr_bits}-bit port address space")
    return min(depth, 1 << cfg.addr_bits)


def _w(n: int) -> str:
    return "" if n == 1 else f"[{n - 1}:0] "


def _traffic_counters(A: int) -> list[str]:
    """Verilog of the traffic counters on port 0 (module docstring)."""
    n = TRAFFIC_RANGES
    p = "mem__0__"
    return [
        "",
        "    // ---- traffic counters (port 0: every access covers all ports alike) ----",
        f"    reg [31:0] tr_lo_r [0:{n - 1}];",
        f"    reg [31:0] tr_hi_r [0:{n - 1}];",
        f"    reg [2:0]  tr_cat_r [0:{n - 1}];",
        f"    reg [63:0] tr_rd_c [0:{n - 1}];",
        f"    reg [63:0] tr_wr_c [0:{n - 1}];",
        "    integer tr_k;",
        "    initial for (tr_k = 0; tr_k < " + str(n) + "; tr_k = tr_k + 1) begin",
        "        tr_lo_r[tr_k] = 32'd0; tr_hi_r[tr_k] = 32'd0; tr_cat_r[tr_k] = 3'd0;",
        "    end",
        f"    wire [31:0] tr_raddr = {{{{{32 - A}{{1'b0}}}}, {p}rd_req__payload[{A - 1}:0]}};"
        if A < 32 else f"    wire [31:0] tr_raddr = {p}rd_req__payload[31:0];",
        f"    wire [15:0] tr_rlen = {p}rd_req__payload[{A + 15}:{A}];",
        f"    wire [31:0] tr_waddr = {{{{{32 - A}{{1'b0}}}}, {p}wr__payload[{A - 1}:0]}};"
        if A < 32 else f"    wire [31:0] tr_waddr = {p}wr__payload[31:0];",
        "    reg [2:0] tr_rcat, tr_wcat;",
        "    integer tr_j;",
        "    always @* begin",
        f"        tr_rcat = 3'd{TRAFFIC_OTHER};",
        f"        tr_wcat = 3'd{TRAFFIC_OTHER};",
        "        // the lowest matching range wins",
        f"        for (tr_j = {n - 1}; tr_j >= 0; tr_j = tr_j - 1) begin",
        "            if (tr_raddr >= tr_lo_r[tr_j] && tr_raddr < tr_hi_r[tr_j])",
        "                tr_rcat = tr_cat_r[tr_j];",
        "            if (tr_waddr >= tr_lo_r[tr_j] && tr_waddr < tr_hi_r[tr_j])",
        "                tr_wcat = tr_cat_r[tr_j];",
        "        end",
        "    end",
        "    always @(posedge clk) begin",
        "        if (tr_we) begin",
        "            tr_lo_r[tr_idx] <= tr_lo;",
        "            tr_hi_r[tr_idx] <= tr_hi;",
        "            tr_cat_r[tr_idx] <= tr_cat;",
        "        end",
        "        if (rst) begin",
        f"            for (tr_k = 0; tr_k < {n}; tr_k = tr_k + 1) begin",
        "                tr_rd_c[tr_k] <= 64'd0;",
        "                tr_wr_c[tr_k] <= 64'd0;",
        "            end",
        "        end else begin",
        f"            if ({p}rd_req__valid && {p}rd_req__ready)",
        "                tr_rd_c[tr_rcat] <= tr_rd_c[tr_rcat] + {48'd0, tr_rlen};",
        f"            if ({p}wr__valid && {p}wr__ready)",
        "                tr_wr_c[tr_wcat] <= tr_wr_c[tr_wcat] + 64'd1;",
        "        end",
        "    end",
        "    assign tr_rd = {" + ", ".join(f"tr_rd_c[{k}]" for k in reversed(range(n))) + "};",
        "    assign tr_wr = {" + ", ".join(f"tr_wr_c[{k}]" for k in reversed(range(n))) + "};",
    ]


def sim_top_verilog(cfg: AccelConfig, mem_depth: int | None = None, read_latency: int = 32,
                    queue_log2: int = 6, clock_period_ns: int | None = None,
                    rate_bytes: int | None = None) -> str:
    """Return the Verilog source of ``hwflow_sim_top`` for ``cfg``.

    Parameters
    ----------
    cfg : AccelConfig
        Accelerator configuration (NP, W and addr_bits shape the memory ports).
    mem_depth : int, optional
        Beats per memory port (default :func:`default_mem_depth` of an empty image).
    read_latency : int
        Cycles from an accepted read request to its first beat (32 ~ HBM at 300 MHz).
    queue_log2 : int
        log2 of the outstanding read requests per port (64 covers the 32-cycle latency with
        one-beat requests, so even instruction fetches stream).
    clock_period_ns : int, optional
        Generate ``clk`` inside the top with this (even) period instead of taking it as an input.
        Needs Verilator's ``--timing``; it saves the per-edge VPI round trip of a cocotb clock.
    rate_bytes : int, optional
        Bytes per cycle the memory behind each port delivers (``ext_memory``'s RATE_BYTES:
        a port wider than its channel's rate gets a beat on that fraction of cycles); default,
        or at least ``cfg.port_bytes``: a beat per cycle.
    """
    if mem_depth is None:
        mem_depth = default_mem_depth(cfg)
    if mem_depth & (mem_depth - 1) or mem_depth < 2:
        raise ValueError(f"mem_depth {mem_depth} must be a power of two >= 2")
    NP, A, DW = cfg.mem_ports, cfg.addr_bits, 8 * cfg.port_bytes
    rate = cfg.port_bytes if rate_bytes is None else min(int(rate_bytes), cfg.port_bytes)
    if rate < 1:
        raise ValueError(f"rate_bytes {rate_bytes} must be at least 1")
    lines = [
        "// Generated by hwflow.sim.top; do not edit.",
        f"// AccelConfig {cfg.to_dict()} digest {cfg.digest()}",
        "`default_nettype none",
        f"module {TOP_NAME} (",
    ]
    # With an internal clock, clk is still a port (an output) so cocotb can wait on its edges
    # without Verilator making internal signals public (which costs simulation speed).
    lines.append("    input  wire clk," if clock_period_ns is None else "    output reg clk,")
    lines.append("    input  wire rst,")
    for name, d, w in CTRL_PORTS:
        lines.append(f"    {d:6} wire {_w(w)}ctrl__{name},")
    lines += [
        "    input  wire dump,",
        "    input  wire poke,",
        "    input  wire [7:0] dump_id,",
        "    input  wire [31:0] dump_lo,",
        "    input  wire [31:0] dump_hi,",
        "    output wire mem_oob,",
        "    output wire [63:0] mem_rd_beats,",
        "    output wire [63:0] mem_wr_beats,",
        "    input  wire tr_we,",
        "    input  wire [2:0] tr_idx,",
        "    input  wire [31:0] tr_lo,",
        "    input  wire [31:0] tr_hi,",
        "    input  wire [2:0] tr_cat,",
        f"    output wire [{64 * TRAFFIC_RANGES - 1}:0] tr_rd,",
        f"    output wire [{64 * TRAFFIC_RANGES - 1}:0] tr_wr,",
        "    output wire irq",
        ");",
    ]
    if clock_period_ns is not None:
        if clock_period_ns < 2 or clock_period_ns % 2:
            raise ValueError("clock_period_ns must be an even number >= 2")
        lines += ["    initial clk = 1'b0;", f"    always #{clock_period_ns // 2} clk = ~clk;"]
    for j in range(NP):
        p = f"mem__{j}__"
        lines += [
            f"    wire {p}rd_req__valid, {p}rd_req__ready;",
            f"    wire [{A + 15}:0] {p}rd_req__payload;",
            f"    wire {p}rd_data__valid, {p}rd_data__ready;",
            f"    wire [{DW - 1}:0] {p}rd_data__payload;",
            f"    wire {p}wr__valid, {p}wr__ready;",
            f"    wire [{A + DW - 1}:0] {p}wr__payload;",
            f"    wire oob_{j};",
            f"    wire [63:0] rd_beats_{j}, wr_beats_{j};",
        ]
    conns = ["        .clk(clk)", "        .rst(rst)"]
    conns += [f"        .ctrl__{n}(ctrl__{n})" for n, _, _ in CTRL_PORTS]
    for j in range(NP):
        for s in ("rd_req", "rd_data", "wr"):
            for f in ("valid", "ready", "payload"):
                conns.append(f"        .mem__{j}__{s}__{f}(mem__{j}__{s}__{f})")
    conns.append("        .irq(irq)")
    lines += ["", "    hwflow_accel accel (", ",\n".join(conns), "    );", ""]
    for j in range(NP):
        p = f"mem__{j}__"
        lines += [
            f"    ext_memory #(.DATA_BYTES({cfg.port_bytes}), .ADDR_BITS({A}), "
            f".DEPTH({mem_depth}), .READ_LATENCY({read_latency}), "
            f".QDEPTH_LOG2({queue_log2}), .PORT({j}), .RATE_BYTES({rate})) mem{j} (",
            "        .clk(clk), .rst(rst),",
            f"        .rd_req_valid({p}rd_req__valid), .rd_req_ready({p}rd_req__ready), "
            f".rd_req_payload({p}rd_req__payload),",
            f"        .rd_data_valid({p}rd_data__valid), .rd_data_ready({p}rd_data__ready), "
            f".rd_data_payload({p}rd_data__payload),",
            f"        .wr_valid({p}wr__valid), .wr_ready({p}wr__ready), "
            f".wr_payload({p}wr__payload),",
            "        .dump(dump), .poke(poke), .dump_id(dump_id), .dump_lo(dump_lo), "
            ".dump_hi(dump_hi),",
            f"        .oob(oob_{j}), .rd_beats(rd_beats_{j}), .wr_beats(wr_beats_{j})",
            "    );",
        ]
    lines += [
        "",
        "    assign mem_oob = " + " | ".join(f"oob_{j}" for j in range(NP)) + ";",
        "    assign mem_rd_beats = rd_beats_0;",
        "    assign mem_wr_beats = wr_beats_0;",
    ]
    lines += _traffic_counters(A)
    lines += [
        "endmodule",
        "`default_nettype wire",
        "",
    ]
    return "\n".join(lines)
