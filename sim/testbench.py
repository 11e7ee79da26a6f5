"""cocotb test module for ``hwflow_sim_top``: run programs on the accelerator, read results back.

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
     "traffic": [{"lo": sb, "hi": sb, "category": 0..4}, ...],   # optional, at most 8
     "steps": [...],                                 # optional, see below
     "result": "<dir>/result.json"}

Without ``steps`` the job is one run of the program at ``prog_base`` (with ``pos``, default 0).
``steps`` is a list of runs in this one simulator process (memory, so the KV cache, persists
between them; the accelerator is reset once, before the first)::

    {"prog_base": sb, "pos": int,
     "writes": [{"addr": sb, "path": "<file with the bytes>"}, ...],   # before the run
     "readback": [...], "expect": [...],            # as above, after the run
     "argmax": {"region": k, "row_bytes": int, "row": r, "vocab": V, "ids_addr": sb,
                "next_step_ids": true}}             # optional

``argmax``: after the run, the int8 row ``r`` of read-back region ``k`` is taken, its argmax over
the first ``V`` entries (the lowest index on ties) is the step's ``token``, written as a u32 at
byte 0 of super-beat ``ids_addr`` (with ``next_step_ids``), so the next step decodes from the
RTL's own token. The result has ``steps``: one dict per run (cycles, retired, error, done,
``traffic`` in bytes per category and direction, ``token``); its top-level fields are the last
run's.

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

from hwflow.hw.contract import REG
from hwflow.mapping.memory_image import join_ports, split_ports
from hwflow.sim.top import TRAFFIC_CATEGORIES, TRAFFIC_OTHER

JOB_ENV = "HWFLOW_SIM_JOB"
JOB_FILE = "hwflow_job.json"

# Control registers (hw.contract.REG; docs/architecture.md, "Control registers"); TLMM_BUSY
# reads 0 without the TLMM engine.
AP_CTRL, PROG_BASE, POS = REG["AP_CTRL"], REG["PROG_BASE"], REG["POS"]
CYCLES_LO, CYCLES_HI = REG["CYCLES_LO"], REG["CYCLES_HI"]
MPE_BUSY_LO, MPE_BUSY_HI = REG["MPE_BUSY_LO"], REG["MPE_BUSY_HI"]
RETIRED, ERROR = REG["RETIRED"], REG["ERROR"]
TLMM_BUSY_LO, TLMM_BUSY_HI = REG["TLMM_BUSY_LO"], REG["TLMM_BUSY_HI"]

# An AXI4-Lite handshake that takes longer than this is a hung slave, not a slow one.
AXI_TIMEOUT_CYCLES = 1000


# -- per-port beat files (the striping: mapping.memory_image.split_ports) -----------------------

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


def _counters(value, n: int = 8) -> list[int]:
    v = int(value)
    return [(v >> (64 * k)) & ((1 << 64) - 1) for k in range(n)]


def traffic_bytes(rd_beats: list[int], wr_beats: list[int], sb: int) -> dict:
    """Bytes per category and direction from beat counts (index 7: unclassified)."""
    out = {}
    for k, name in enumerate(TRAFFIC_CATEGORIES):
        out[f"{name}_read"] = rd_beats[k] * sb
        out[f"{name}_written"] = wr_beats[k] * sb
    out["other_read"] = rd_beats[TRAFFIC_OTHER] * sb
    out["other_written"] = wr_beats[TRAFFIC_OTHER] * sb
    return out


def argmax_token(region: bytes, row_bytes: int, row: int, vocab: int) -> int:
    """Greedy token: argmax of the int8 logits ``region[row * row_bytes:][:vocab]`` (lowest
    index on ties)."""
    logits = np.frombuffer(region, dtype=np.int8)[row * row_bytes: row * row_bytes + vocab]
    return int(np.argmax(logits))


class Memory:
    """Host access to every port's memory between runs (dump and poke, one clock edge each)."""

    def __init__(self, dut, prefixes: list[str], mem_ports: int, port_bytes: int):
        self.dut, self.prefixes = dut, prefixes
        self.NP, self.W = mem_ports, port_bytes
        self.sb = mem_ports * port_bytes
        self.n = 0                                  # file id of the next dump/poke

    async def read(self, addr: int, nbytes: int) -> bytes:
        nbeats = -(-nbytes // self.sb)
        if nbeats == 0 or not self.prefixes:
            return b""
        d, k = self.dut, self.n
        self.n += 1
        await FallingEdge(d.clk)
        d.dump_id.value, d.dump_lo.value, d.dump_hi.value = k % 256, addr, addr + nbeats - 1
        d.dump.value = 1
        await FallingEdge(d.clk)
        d.dump.value = 0
        per_port = [read_port_hex(f"{self.prefixes[j]}.r{k % 256}.hex", self.W)[:nbeats]
                    for j in range(self.NP)]
        return join_ports(per_port)[:nbytes]

    async def write(self, addr: int, data: bytes) -> None:
        """Write ``data`` at super-beat ``addr``; a partial last super-beat keeps its other
        bytes (read, merged, written back)."""
        if not data:
            return
        nbeats = -(-len(data) // self.sb)
        if len(data) % self.sb:
            old = await self.read(addr, nbeats * self.sb)
            data = data + old[len(data):]
        d, k = self.dut, self.n % 256
        self.n += 1
        ports = split_ports(data, self.NP, self.W)
        for j in range(self.NP):
            write_port_hex(f"{self.prefixes[j]}.w{k}.hex", ports[j])
        await FallingEdge(d.clk)
        d.dump_id.value, d.dump_lo.value, d.dump_hi.value = k, addr, addr + nbeats - 1
        d.poke.value = 1
        await FallingEdge(d.clk)
        d.poke.value = 0


def _steps(job: dict) -> list[dict]:
    if job.get("steps"):
        return job["steps"]
    return [{"prog_base": job["prog_base"], "pos": job.get("pos", 0),
             "readback": job.get("readback", []), "expect": job.get("expect", [])}]


async def _run_step(dut, axi, mem, step, timeout, period, sb):
    """One run: host writes, POS, PROG_BASE, start, wait for irq, registers, traffic, read-back."""
    for wr in step.get("writes", []):
        await mem.write(int(wr["addr"]), Path(wr["path"]).read_bytes())
    rd0, wr0 = _counters(dut.tr_rd.value), _counters(dut.tr_wr.value)
    res = {"done": False, "timed_out": False}
    await axi.write(POS, int(step.get("pos", 0)))
    await axi.write(PROG_BASE, int(step["prog_base"]))
    t0 = time.perf_counter()
    await axi.write(AP_CTRL, 1)
    # A very short program (END first, or an illegal opcode) may be done before the write's
    # response came back; irq is a level, so look at it before waiting for its edge.
    if not dut.irq.value:
        await First(RisingEdge(dut.irq), Timer(timeout * period, unit="ns"))
    res["run_wall_s"] = time.perf_counter() - t0
    res["done"] = bool(dut.irq.value)
    res["timed_out"] = not res["done"]

    res["ap_ctrl"] = await axi.read(AP_CTRL)
    res["cycles"] = await axi.read64(CYCLES_LO, CYCLES_HI)
    res["mpe_busy"] = await axi.read64(MPE_BUSY_LO, MPE_BUSY_HI)
    res["tlmm_busy"] = await axi.read64(TLMM_BUSY_LO, TLMM_BUSY_HI)
    res["retired"] = await axi.read(RETIRED)
    res["error"] = await axi.read(ERROR)
    res["mem_oob"] = bool(dut.mem_oob.value)
    res["mem_rd_beats"] = int(dut.mem_rd_beats.value)
    res["mem_wr_beats"] = int(dut.mem_wr_beats.value)
    rd1, wr1 = _counters(dut.tr_rd.value), _counters(dut.tr_wr.value)
    res["traffic"] = traffic_bytes([b - a for a, b in zip(rd0, rd1, strict=True)],
                                   [b - a for a, b in zip(wr0, wr1, strict=True)], sb)

    # Read-back: every memory model writes the requested beat range with $writememh at one edge;
    # the accelerator is idle by now, so nothing moves while the dumps happen.
    regions = []
    for reg in step.get("readback", []):
        data = await mem.read(int(reg["addr"]), int(reg["nbytes"]))
        regions.append(data)
        if reg.get("path"):
            Path(reg["path"]).write_bytes(data)
    res["readback"] = [r.get("path") for r in step.get("readback", [])]

    mismatches = []
    for exp in step.get("expect", []):
        want = Path(exp["path"]).read_bytes()
        got = regions[int(exp["region"])]
        if got != want:
            bad = next((i for i in range(min(len(got), len(want))) if got[i] != want[i]),
                       min(len(got), len(want)))
            mismatches.append(f"region {exp['region']}: first difference at byte {bad}")
    res["mismatches"] = mismatches

    am = step.get("argmax")
    res["token"] = None
    if am and res["done"]:
        tok = argmax_token(regions[int(am["region"])], int(am["row_bytes"]),
                           int(am.get("row", 0)), int(am["vocab"]))
        res["token"] = tok
        if am.get("next_step_ids", True):
            await mem.write(int(am["ids_addr"]), tok.to_bytes(4, "little"))
    return res


@cocotb.test()
async def run_program(dut):
    """Reset, then for every step: host writes, start the program at PROG_BASE with POS, wait
    for irq, read counters, traffic and result regions (and feed back the argmax token)."""
    job = load_job()
    period = float(job.get("clock_period_ns", 4))
    NP, W = int(job["mem_ports"]), int(job["port_bytes"])
    sb = NP * W
    # Either the top generates clk itself (job["rtl_clock"]) or cocotb 2's Clock toggles it from
    # C++ (GPI); Python is not woken every cycle either way.
    if not job.get("rtl_clock"):
        Clock(dut.clk, period, unit="ns").start()
    axi = AxiLiteMaster(dut, period)
    dut.dump.value, dut.dump_id.value, dut.dump_lo.value, dut.dump_hi.value = 0, 0, 0, 0
    dut.poke.value = 0
    dut.tr_we.value, dut.tr_idx.value, dut.tr_lo.value, dut.tr_hi.value = 0, 0, 0, 0
    dut.tr_cat.value = 0
    dut.rst.value = 1
    await ClockCycles(dut.clk, int(job.get("reset_cycles", 4)))
    await FallingEdge(dut.clk)
    dut.rst.value = 0
    # traffic ranges: one per clock edge; unused ones stay empty (lo = hi = 0)
    for k, rng in enumerate(job.get("traffic", [])[:8]):
        dut.tr_idx.value, dut.tr_lo.value, dut.tr_hi.value = k, int(rng["lo"]), int(rng["hi"])
        dut.tr_cat.value = int(rng["category"])
        dut.tr_we.value = 1
        await FallingEdge(dut.clk)
    dut.tr_we.value = 0

    mem = Memory(dut, job.get("dump_prefixes", []), NP, W)
    timeout = int(job.get("timeout_cycles", 10_000_000))
    steps = []
    for step in _steps(job):
        res = await _run_step(dut, axi, mem, step, timeout, period, sb)
        steps.append(res)
        dut._log.info("hwflow run %d: %d cycles in %.3f s (%.0f cycles/s), retired %d, "
                      "error %d", len(steps) - 1, res["cycles"], res["run_wall_s"],
                      res["cycles"] / max(res["run_wall_s"], 1e-9), res["retired"],
                      res["error"])
        if not res["done"]:
            break                   # still running: later steps cannot start
    result = dict(steps[-1])
    result["steps"] = steps
    result["mismatches"] = [f"step {i}: {m}" if len(steps) > 1 else m
                            for i, r in enumerate(steps) for m in r["mismatches"]]
    result["timed_out"] = any(r["timed_out"] for r in steps)
    result["mem_oob"] = bool(dut.mem_oob.value)
    if job.get("result"):
        Path(job["result"]).write_text(json.dumps(result, indent=1))

    assert not result["timed_out"], f"no irq within {timeout} cycles"
    assert not result["mem_oob"], "an access fell outside the simulated memory"
    assert not result["mismatches"], "; ".join(result["mismatches"])
