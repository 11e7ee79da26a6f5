"""cocotb test module for ``hwflow_sim_top``: run one program on the accelerator, read results back.

Self-contained on purpose (only cocotb, the standard library and numpy): it is copied into build
and work folders and can be run there with plain pytest or any cocotb runner, without hwflow.

The job is a JSON file, found through ``$HWFLOW_SIM_JOB`` or as ``hwflow_job.json`` beside this
file::

    {"mem_ports": NP, "port_bytes": W, "prog_base": super-beat,
     "timeout_cycles": int, "clock_period_ns": 4, "reset_cycles": 4,
     "rtl_clock": false,                            # true: hwflow_sim_top makes clk itself
     "dump_prefixes": ["<dir>/dump.p0", ...],      # same as the +hwflow_dump<j> plusargs
     "readback": [{"addr": super-beat, "nbytes": int, "path": "<dir>/region0.bin"}, ...],
     "expect": [{"region": 0, "path": "<file with the expected bytes>"}, ...],   # optional
     "result": "<dir>/result.json"}

The memory contents come from the ``+hwflow_mem<j>=<hex file>`` plusargs (see
``sim/rtl/ext_memory.v``; :func:`write_port_hex` writes those files). Python never steps the clock:
the clock is cocotb's C++ (GPI) clock and the test sleeps until ``irq`` rises or the timeout
expires, so the simulation runs at Verilator speed.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge, First, RisingEdge, Timer

JOB_ENV = "HWFLOW_SIM_JOB"
JOB_FILE = "hwflow_job.json"

# Control registers (docs/architecture.md, "Top level").
AP_CTRL, PROG_BASE = 0x00, 0x10
CYCLES_LO, CYCLES_HI = 0x18, 0x1C
MPE_BUSY_LO, MPE_BUSY_HI = 0x20, 0x24
RETIRED, ERROR = 0x28, 0x2C

# An AXI4-Lite handshake that takes longer than this is a hung slave, not a slow one.
AXI_TIMEOUT_CYCLES = 1000


# -- striping: the flat image <-> per-port beat files -------------------------------------------

def split_ports(image: bytes, mem_ports: int, port_bytes: int) -> np.ndarray:
    """Beats of every port: ``[mem_ports, n_superbeats, port_bytes]`` (uint8).

    Super-beat ``s`` is bytes ``[s*SB, (s+1)*SB)``; port ``j`` holds bytes
    ``[s*SB + j*W, s*SB + (j+1)*W)`` at beat ``s``. The image is zero-padded to whole super-beats.
    """
    sb = mem_ports * port_bytes
    buf = np.frombuffer(image, dtype=np.uint8)
    pad = (-buf.size) % sb
    if pad:
        buf = np.concatenate([buf, np.zeros(pad, dtype=np.uint8)])
    return buf.reshape(-1, mem_ports, port_bytes).transpose(1, 0, 2)


def write_port_hex(path, beats: np.ndarray) -> None:
    """Write ``beats[n, W]`` as a ``$readmemh`` file: one line a beat, byte 0 in the low bits."""
    n, w = beats.shape
    text = np.ascontiguousarray(beats[:, ::-1]).tobytes().hex()
    step = 2 * w
    Path(path).write_text("\n".join(text[i:i + step] for i in range(0, len(text), step)) + "\n")


def read_port_hex(path, port_bytes: int) -> np.ndarray:
    """Parse a ``$writememh`` file into ``beats[n, W]`` (uint8), byte 0 from the low bits."""
    words = []
    for line in Path(path).read_text().split("\n"):
        line = line.split("//")[0].strip()
        if not line or line.startswith("@"):
            continue
        words.extend(line.split())
    text = "".join(w.replace("x", "0").replace("X", "0").zfill(2 * port_bytes) for w in words)
    raw = np.frombuffer(bytes.fromhex(text), dtype=np.uint8).reshape(-1, port_bytes)
    return raw[:, ::-1]


def join_ports(per_port: list[np.ndarray]) -> bytes:
    """Inverse of :func:`split_ports` for a run of super-beats: list of ``beats[n, W]``."""
    return np.stack(per_port, axis=1).tobytes()


# -- AXI4-Lite master ---------------------------------------------------------------------------

class AxiLiteMaster:
    """Minimal AXI4-Lite master on the ``ctrl__*`` signals.

    Signals are driven just after a falling edge and handshakes are sampled a quarter period
    later, so both sides see stable values at the rising edge where a transfer happens.
    """

    def __init__(self, dut, period_ns: float):
        self.dut, self.clk = dut, dut.clk
        self.quarter = period_ns / 4
        for name in ("awvalid", "awaddr", "wvalid", "wdata", "wstrb", "bready", "arvalid",
                     "araddr", "rready"):
            getattr(dut, f"ctrl__{name}").value = 0

    async def _mid(self):
        await FallingEdge(self.clk)
        await Timer(self.quarter, unit="ns")

    async def write(self, addr: int, data: int) -> None:
        d = self.dut
        await FallingEdge(self.clk)
        d.ctrl__awaddr.value, d.ctrl__awvalid.value = addr, 1
        d.ctrl__wdata.value, d.ctrl__wstrb.value, d.ctrl__wvalid.value = data & 0xFFFFFFFF, 0xF, 1
        d.ctrl__bready.value = 1
        aw = w = b = False
        await Timer(self.quarter, unit="ns")
        for _ in range(AXI_TIMEOUT_CYCLES):
            aw_now = not aw and bool(d.ctrl__awready.value)
            w_now = not w and bool(d.ctrl__wready.value)
            b_now = (aw or aw_now) and (w or w_now) and bool(d.ctrl__bvalid.value)
            await RisingEdge(self.clk)
            aw, w, b = aw or aw_now, w or w_now, b or b_now
            await FallingEdge(self.clk)
            if aw:
                d.ctrl__awvalid.value = 0
            if w:
                d.ctrl__wvalid.value = 0
            if b:
                d.ctrl__bready.value = 0
                return
            await Timer(self.quarter, unit="ns")
        raise TimeoutError(f"AXI4-Lite write to 0x{addr:03x} got no response")

    async def read(self, addr: int) -> int:
        d = self.dut
        await FallingEdge(self.clk)
        d.ctrl__araddr.value, d.ctrl__arvalid.value = addr, 1
        d.ctrl__rready.value = 1
        ar = False
        await Timer(self.quarter, unit="ns")
        for _ in range(AXI_TIMEOUT_CYCLES):
            ar_now = not ar and bool(d.ctrl__arready.value)
            r_now = ar and bool(d.ctrl__rvalid.value)
            data = int(d.ctrl__rdata.value) if r_now else None
            await RisingEdge(self.clk)
            ar = ar or ar_now
            await FallingEdge(self.clk)
            if ar:
                d.ctrl__arvalid.value = 0
            if r_now:
                d.ctrl__rready.value = 0
                return data
            await Timer(self.quarter, unit="ns")
        raise TimeoutError(f"AXI4-Lite read of 0x{addr:03x} got no response")

    async def read64(self, lo: int, hi: int) -> int:
        return await self.read(lo) | (await self.read(hi)) << 32


# -- the test -----------------------------------------------------------------------------------

def load_job() -> dict:
    path = os.environ.get(JOB_ENV) or str(Path(__file__).with_name(JOB_FILE))
    return json.loads(Path(path).read_text())


@cocotb.test()
async def run_program(dut):
    """Reset, start the program at PROG_BASE, wait for irq, read counters and result regions."""
    job = load_job()
    period = float(job.get("clock_period_ns", 4))
    NP, W = int(job["mem_ports"]), int(job["port_bytes"])
    # Either the top generates clk itself (job["rtl_clock"]) or cocotb 2's Clock toggles it from
    # C++ (GPI); Python is not woken every cycle either way.
    if not job.get("rtl_clock"):
        Clock(dut.clk, period, unit="ns").start()
    axi = AxiLiteMaster(dut, period)
    dut.dump.value, dut.dump_id.value, dut.dump_lo.value, dut.dump_hi.value = 0, 0, 0, 0
    dut.rst.value = 1
    await ClockCycles(dut.clk, int(job.get("reset_cycles", 4)))
    await FallingEdge(dut.clk)
    dut.rst.value = 0

    result = {"done": False, "timed_out": False}
    await axi.write(PROG_BASE, int(job["prog_base"]))
    timeout = int(job.get("timeout_cycles", 10_000_000))
    t0 = time.perf_counter()
    await axi.write(AP_CTRL, 1)
    # A very short program (END first, or an illegal opcode) may be done before the write's
    # response came back; irq is a level, so look at it before waiting for its edge.
    if not dut.irq.value:
        await First(RisingEdge(dut.irq), Timer(timeout * period, unit="ns"))
    result["run_wall_s"] = time.perf_counter() - t0
    result["done"] = bool(dut.irq.value)
    result["timed_out"] = not result["done"]

    result["ap_ctrl"] = await axi.read(AP_CTRL)
    result["cycles"] = await axi.read64(CYCLES_LO, CYCLES_HI)
    result["mpe_busy"] = await axi.read64(MPE_BUSY_LO, MPE_BUSY_HI)
    result["retired"] = await axi.read(RETIRED)
    result["error"] = await axi.read(ERROR)
    result["mem_oob"] = bool(dut.mem_oob.value)
    result["mem_rd_beats"] = int(dut.mem_rd_beats.value)
    result["mem_wr_beats"] = int(dut.mem_wr_beats.value)

    # Read-back: every memory model writes the requested beat range with $writememh at one edge;
    # the accelerator is idle by now, so nothing moves while the dumps happen.
    sb = NP * W
    prefixes = job.get("dump_prefixes", [])
    regions = []
    for k, reg in enumerate(job.get("readback", [])):
        nbeats = -(-int(reg["nbytes"]) // sb)
        if nbeats == 0 or not prefixes:
            regions.append(b"")
            continue
        await FallingEdge(dut.clk)
        lo = int(reg["addr"])
        dut.dump_id.value, dut.dump_lo.value, dut.dump_hi.value = k, lo, lo + nbeats - 1
        dut.dump.value = 1
        await FallingEdge(dut.clk)
        dut.dump.value = 0
        per_port = [read_port_hex(f"{prefixes[j]}.r{k}.hex", W)[:nbeats] for j in range(NP)]
        data = join_ports(per_port)[: int(reg["nbytes"])]
        regions.append(data)
        if reg.get("path"):
            Path(reg["path"]).write_bytes(data)
    result["readback"] = [r.get("path") for r in job.get("readback", [])]

    mismatches = []
    for exp in job.get("expect", []):
        want = Path(exp["path"]).read_bytes()
        got = regions[int(exp["region"])]
        if got != want:
            bad = next((i for i in range(min(len(got), len(want))) if got[i] != want[i]),
                       min(len(got), len(want)))
            mismatches.append(f"region {exp['region']}: first difference at byte {bad}")
    result["mismatches"] = mismatches
    if job.get("result"):
        Path(job["result"]).write_text(json.dumps(result, indent=1))

    dut._log.info("hwflow run: %d cycles in %.3f s (%.0f cycles/s), retired %d, error %d",
                  result["cycles"], result["run_wall_s"],
                  result["cycles"] / max(result["run_wall_s"], 1e-9), result["retired"],
                  result["error"])
    assert not result["timed_out"], f"no irq within {timeout} cycles"
    assert not result["mem_oob"], "an access fell outside the simulated memory"
    assert not mismatches, "; ".join(mismatches)
