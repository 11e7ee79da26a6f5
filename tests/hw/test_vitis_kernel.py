"""Vitis RTL kernel top: port names and widths as Vitis expects them, a Verilator lint, and a
whole program run through the AXI4 masters against Python AXI4 memories (one buffer per port,
at unrelated device addresses), checked against golden."""

from __future__ import annotations

import random
import re
from types import SimpleNamespace

import numpy as np
from amaranth.sim import Simulator

from hwflow.hw.axi4 import axi4_signature
from hwflow.hw.axi_lite import axi_lite_signature
from hwflow.hw.config import AccelConfig
from hwflow.hw.vitis_kernel import KERNEL_REG, VitisKernel, generate_kernel_verilog, mem_arg_offset

from ._lint import assert_lints_clean
from .test_axi4 import AXI4Memory
from .test_top import CFG, _program_case


async def axi_write(ctx, c, addr, value):
    ctx.set(c.awaddr, addr)
    ctx.set(c.wdata, value)
    ctx.set(c.wstrb, 0xF)
    ctx.set(c.awvalid, 1)
    ctx.set(c.wvalid, 1)
    ctx.set(c.bready, 1)
    await ctx.tick("ap").until(c.awready)
    ctx.set(c.awvalid, 0)
    ctx.set(c.wvalid, 0)
    await ctx.tick("ap").until(c.bvalid)
    ctx.set(c.bready, 0)


async def axi_read(ctx, c, addr):
    ctx.set(c.araddr, addr)
    ctx.set(c.arvalid, 1)
    await ctx.tick("ap").until(c.arready)
    ctx.set(c.arvalid, 0)
    ctx.set(c.rready, 1)
    (data,) = await ctx.tick("ap").sample(c.rdata).until(c.rvalid)
    ctx.set(c.rready, 0)
    return data


def verilog_ports(text: str, module: str) -> dict[str, tuple[str, int]]:
    """``{name: (direction, width)}`` of a module in Amaranth's non-ANSI Verilog."""
    body = text[text.index(f"module {module}("):]
    body = body[:body.index("endmodule")]
    return {m.group(3): (m.group(1), int(m.group(2) or 0) + 1)
            for m in re.finditer(r"^\s*(input|output)\s+(?:\[(\d+):0\]\s+)?(\w+);", body, re.M)}


def test_ports_as_vitis_expects(tmp_path):
    cfg = AccelConfig(chains=4, chain_len=8, mem_ports=2, port_bytes=16, act_depth=128,
                      weight_depth=32)
    v = generate_kernel_verilog(cfg, freq_hz=300_000_000)
    ports = verilog_ports(v, "hwflow_kernel")
    expect = {"ap_clk": ("input", 1), "ap_rst_n": ("input", 1), "interrupt": ("output", 1)}
    lite = {"awvalid": ("input", 1), "awready": ("output", 1), "awaddr": ("input", 12),
            "wvalid": ("input", 1), "wready": ("output", 1), "wdata": ("input", 32),
            "wstrb": ("input", 4), "bvalid": ("output", 1), "bready": ("input", 1),
            "bresp": ("output", 2), "arvalid": ("input", 1), "arready": ("output", 1),
            "araddr": ("input", 12), "rvalid": ("output", 1), "rready": ("input", 1),
            "rdata": ("output", 32), "rresp": ("output", 2)}
    expect |= {f"s_axi_control_{k}": d for k, d in lite.items()}
    for j in range(cfg.mem_ports):
        full = {"arvalid": ("output", 1), "arready": ("input", 1), "araddr": ("output", 64),
                "arlen": ("output", 8), "arsize": ("output", 3), "arburst": ("output", 2),
                "rvalid": ("input", 1), "rready": ("output", 1), "rdata": ("input", 128),
                "rlast": ("input", 1), "rresp": ("input", 2),
                "awvalid": ("output", 1), "awready": ("input", 1), "awaddr": ("output", 64),
                "awlen": ("output", 8), "awsize": ("output", 3), "awburst": ("output", 2),
                "wvalid": ("output", 1), "wready": ("input", 1), "wdata": ("output", 128),
                "wstrb": ("output", 16), "wlast": ("output", 1),
                "bvalid": ("input", 1), "bready": ("output", 1), "bresp": ("input", 2)}
        expect |= {f"m_axi_gmem{j}_{k}": d for k, d in full.items()}
    assert ports == expect
    assert "ASSOCIATED_BUSIF s_axi_control:m_axi_gmem0:m_axi_gmem1" in v
    assert "FREQ_HZ 300000000" in v

    assert_lints_clean(tmp_path, v, "hwflow_kernel")


def _bundle(k, prefix, sig):
    return SimpleNamespace(**{n: getattr(k, f"{prefix}_{n}") for n in sig.members})


CYCLE_LIMIT = 30_000


def test_program_through_axi4_masters():
    cfg = CFG
    img, prog_base, expect, n_instr, _ = _program_case(cfg)
    sb, w, n_ports = cfg.beat_bytes, cfg.port_bytes, cfg.mem_ports
    dut = VitisKernel(cfg, wr_burst=16)
    ctrl = _bundle(dut, "s_axi_control", axi_lite_signature())
    bases = [0x2_0000_0000 + 0x1000_0000 * j + 0x40 * j for j in range(n_ports)]
    mems = []
    for j in range(n_ports):
        mem = AXI4Memory(w, random.Random(10 + j), p_stall=0.2, latency=6)
        stripe = b"".join(img[s * sb + j * w:s * sb + (j + 1) * w] for s in range(len(img) // sb))
        mem.mem.update({bases[j] + i: b for i, b in enumerate(stripe)})
        mems.append(mem)
    regs = {}

    async def host(ctx):
        ctx.set(dut.ap_rst_n, 0)                 # held in reset, then released (active low)
        for _ in range(3):
            await ctx.tick("ap")                 # a plain tick reports reset instead of raising
        ctx.set(dut.ap_rst_n, 1)
        for _ in range(2):
            await ctx.tick("ap")
        for j, base in enumerate(bases):
            await axi_write(ctx, ctrl, mem_arg_offset(j), base & 0xFFFF_FFFF)
            await axi_write(ctx, ctrl, mem_arg_offset(j) + 4, base >> 32)
        assert await axi_read(ctx, ctrl, mem_arg_offset(1) + 4) == bases[1] >> 32
        await axi_write(ctx, ctrl, KERNEL_REG["PROG_BASE"], prog_base)
        await axi_write(ctx, ctrl, KERNEL_REG["GIE"], 1)
        await axi_write(ctx, ctrl, KERNEL_REG["IER"], 1)
        assert await axi_read(ctx, ctrl, KERNEL_REG["AP_CTRL"]) & 0b100      # idle
        await axi_write(ctx, ctrl, KERNEL_REG["AP_CTRL"], 1)
        for _ in range(CYCLE_LIMIT):
            if ctx.get(dut.interrupt):
                break
            await ctx.tick("ap")
        assert ctx.get(dut.interrupt), "kernel did not finish"
        # done is shown only after the last B response of every master
        regs["writes_pending"] = sum(1 for m in mems for k, _ in m.log if k == "B")
        for name in ("AP_CTRL", "ISR", "AXI_ERROR"):
            regs[name] = await axi_read(ctx, ctrl, KERNEL_REG[name])
        regs["RETIRED"] = await axi_read(ctx, ctrl, 0x28)
        regs["ERROR"] = await axi_read(ctx, ctrl, 0x2C)
        await axi_write(ctx, ctrl, KERNEL_REG["ISR"], 1)             # toggle: clear
        regs["interrupt_after_clear"] = ctx.get(dut.interrupt)

    sim = Simulator(dut)
    sim.add_clock(1e-8, domain="ap")
    sim.add_testbench(host)
    for j in range(n_ports):
        sim.add_process(mems[j].process(_bundle(dut, f"m_axi_gmem{j}",
                                                axi4_signature(w)), "ap"))
    sim.run()

    for s0, data in expect.items():
        got = bytearray(len(data))
        for i in range(0, len(data), w):
            s, j = divmod(s0 * sb + i, sb)
            j //= w
            got[i:i + w] = mems[j].read(bases[j] + s * w, w)
        assert np.array_equal(np.frombuffer(bytes(got), np.int8), np.frombuffer(data, np.int8))
    assert regs["AP_CTRL"] & 0b1110 == 0b1110              # done, idle, ready
    assert regs["ISR"] == 1 and regs["AXI_ERROR"] == 0 and regs["ERROR"] == 0
    assert regs["RETIRED"] == n_instr
    assert not regs["interrupt_after_clear"]
    # every B response arrived before the host saw the interrupt
    assert regs["writes_pending"] == sum(len(m.aw_bursts) for m in mems)
