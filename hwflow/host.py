"""Run a build folder on a board: the host side of the accelerator contract.

The host does what docs/architecture.md describes, in this order:

1. quantize the float inputs with the input scale of the final IR (``golden.int8.quantize``);
2. write them into the build's memory image (``mapping.memory_image.write_tensor``) and copy the
   image to the device's external memory;
3. write PROG_BASE (0x10) and ``ap_start`` (AP_CTRL 0x00 bit 0), wait for ``ap_done`` (bit 1);
4. read every output region back (``unpack_rows``, the decoder behind ``read_tensor``) and
   dequantize it with the output scale.

A decoder build (``config.json``'s ``"kind": "decoder"``) runs through :func:`generate`
instead: the image is written once, then each run writes its token ids, POS (0x200) and
PROG_BASE, starts and reads the logits of its last row (docs/architecture.md, "Runtime
register and program sharing").

The image layout comes from :mod:`hwflow.mapping.memory_image` and the register offsets from
:mod:`hwflow.hw.contract` (plain Python: the host never loads Amaranth), the same code the
compiler, the simulator and the RTL use, so the host cannot drift from them. What differs
between boards is only a :class:`Device`:

- :class:`ModelDevice`: in-process, memory is a ``bytearray`` and ``ap_start`` runs the ISA
  functional model (``sim.isa_model.run_program``); for tests and dry runs;
- :class:`XrtDevice`: Alveo (U280) and other XRT platforms through ``pyxrt``;
- :class:`PynqDevice`: Kria / Zynq boards (KV260) through ``pynq``.

External memory is striped over the ``NP`` memory ports (super-beat ``s``, port ``j`` holds bytes
``[s*SB + j*W, s*SB + (j+1)*W)`` at its beat ``s``): a board backend keeps one buffer per port,
each in the memory bank the port is connected to, and writes each buffer's physical address to
the port's base-address register (:data:`PORT_BASE_REGS`, a 64-bit pair per port).
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Protocol, runtime_checkable

import numpy as np

from hwflow.errors import HwflowError
from hwflow.hw.config import AccelConfig
from hwflow.hw.contract import AP_DONE, AP_IDLE, AP_START, KERNEL_NAME, REG, mem_arg_offset
from hwflow.mapping.memory_image import (
    MemoryMap,
    join_ports,
    split_ports,
    unpack_rows,
    write_tensor,
)

__all__ = [
    "AP_START", "AP_DONE", "AP_IDLE", "PORT_BASE_REGS", "Device", "ModelDevice", "XrtDevice",
    "PynqDevice", "Build", "load_build", "run", "generate", "split_ports", "join_ports",
]

# Base address of port j's buffer: the kernel wrapper's 64-bit (lo, hi) pair (0x30 + 8*j in
# hw/contract.py, after the accelerator's 0x00..0x2C block); 32 ports (U280 HBM) end at
# 0x130, inside the 12-bit control space. Pass ``port_base_regs`` for another wrapper.
PORT_BASE_REGS = tuple(mem_arg_offset(j) for j in range(32))


@runtime_checkable
class Device(Protocol):
    """What :func:`run` needs from a board: 32-bit control registers and external memory.

    Memory addresses are byte addresses in the flat image (the striping over ports is the
    backend's business). ``reserve`` is called once before the first ``write_mem`` with the
    image size, so that a backend can allocate its buffers.
    """

    def reserve(self, nbytes: int) -> None: ...

    def write_reg(self, offset: int, value: int) -> None: ...

    def read_reg(self, offset: int) -> int: ...

    def write_mem(self, addr_bytes: int, data: bytes) -> None: ...

    def read_mem(self, addr_bytes: int, n: int) -> bytes: ...

    def wait_done(self, timeout_s: float) -> None: ...


def _superbeat_span(addr: int, n: int, sb: int) -> tuple[int, int]:
    """First super-beat and super-beat count covering bytes ``[addr, addr + n)``."""
    first = addr // sb
    return first, -(-(addr + n) // sb) - first


class _PortedDevice:
    """Shared part of the board backends: per-port buffers and super-beat striping.

    Subclasses provide ``_alloc(j, nbytes) -> (buffer, physical address)``,
    ``_buf_write(buf, offset, data)``, ``_buf_read(buf, offset, n) -> bytes`` and register access.
    """

    def __init__(self, cfg: AccelConfig, port_base_regs=PORT_BASE_REGS):
        self.cfg = cfg
        self.port_base_regs = tuple(port_base_regs)[: cfg.mem_ports]
        if len(self.port_base_regs) < cfg.mem_ports:
            raise HwflowError(f"{cfg.mem_ports} memory ports but only "
                              f"{len(self.port_base_regs)} base-address registers given")
        self.bufs = []

    def reserve(self, nbytes: int) -> None:
        sb, W = self.cfg.beat_bytes, self.cfg.port_bytes
        per_port = -(-nbytes // sb) * W
        self.bufs = []
        for j, reg in enumerate(self.port_base_regs):
            buf, phys = self._alloc(j, per_port)
            self.bufs.append(buf)
            self.write_reg(reg, phys & 0xFFFFFFFF)
            self.write_reg(reg + 4, phys >> 32)

    def write_mem(self, addr_bytes: int, data: bytes) -> None:
        sb, W = self.cfg.beat_bytes, self.cfg.port_bytes
        if addr_bytes % sb or len(data) % sb:
            raise ValueError("board memory writes are whole super-beats")
        for j, beats in enumerate(split_ports(data, self.cfg.mem_ports, W)):
            self._buf_write(self.bufs[j], addr_bytes // sb * W, beats.tobytes())

    def read_mem(self, addr_bytes: int, n: int) -> bytes:
        sb, W = self.cfg.beat_bytes, self.cfg.port_bytes
        first, count = _superbeat_span(addr_bytes, n, sb)
        per_port = [np.frombuffer(self._buf_read(b, first * W, count * W), dtype=np.uint8)
                    .reshape(count, W) for b in self.bufs]
        off = addr_bytes - first * sb
        return join_ports(per_port)[off: off + n]

    def wait_done(self, timeout_s: float) -> None:
        _poll_done(self, timeout_s)


def _poll_done(dev, timeout_s: float) -> None:
    t_end = time.monotonic() + timeout_s
    while True:
        if dev.read_reg(REG["AP_CTRL"]) & AP_DONE:
            return
        if time.monotonic() > t_end:
            raise HwflowError(f"accelerator did not raise ap_done within {timeout_s:g} s")
        time.sleep(1e-4)


class ModelDevice:
    """In-process device: a ``bytearray`` memory and the ISA functional model as the engine.

    Writing ``ap_start`` runs ``sim.isa_model.run_program`` on the memory at PROG_BASE (with the
    POS register as the run's position, for decoder programs), fills
    RETIRED / MPE_BUSY / ERROR like the RTL (MPE_BUSY as the model's k-group count; CYCLES reads
    0, the model has no clock: ``mapping.cycles.predict`` estimates it) and sets ``ap_done``.
    Same results, bit for bit, as the RTL (that is what ``hwflow sim`` checks), so a host program
    can be tested without a board.

    Parameters
    ----------
    cfg : AccelConfig
        The build's accelerator configuration (``config.json``'s ``accel``).
    """

    def __init__(self, cfg: AccelConfig):
        self.cfg = cfg
        self.mem = bytearray()
        self.regs = {off: 0 for off in REG.values()}
        self.regs[REG["AP_CTRL"]] = AP_IDLE
        self.stats = None

    def reserve(self, nbytes: int) -> None:
        self.mem = bytearray(-(-nbytes // self.cfg.beat_bytes) * self.cfg.beat_bytes)

    def write_reg(self, offset: int, value: int) -> None:
        value &= 0xFFFFFFFF
        if offset == REG["AP_CTRL"]:
            if value & AP_START:
                self._start()
            return
        self.regs[offset] = value

    def read_reg(self, offset: int) -> int:
        return self.regs.get(offset, 0)

    def write_mem(self, addr_bytes: int, data: bytes) -> None:
        end = addr_bytes + len(data)
        if end > len(self.mem):
            self.mem.extend(bytes(end - len(self.mem)))
        self.mem[addr_bytes:end] = data

    def read_mem(self, addr_bytes: int, n: int) -> bytes:
        return bytes(self.mem[addr_bytes: addr_bytes + n])

    def wait_done(self, timeout_s: float) -> None:
        if not self.regs[REG["AP_CTRL"]] & AP_DONE:
            raise HwflowError("accelerator did not raise ap_done (was it started?)")

    def _start(self) -> None:
        from hwflow.sim.isa_model import IllegalInstruction, run_program

        try:
            image, stats = run_program(self.cfg, bytes(self.mem), self.regs[REG["PROG_BASE"]],
                                       pos=self.regs[REG["POS"]])
        except IllegalInstruction:
            self.regs[REG["ERROR"]] = 1
            self.regs[REG["AP_CTRL"]] = AP_DONE | AP_IDLE
            return
        self.mem[:] = image
        self.stats = stats
        self.regs[REG["RETIRED"]] = stats.retired & 0xFFFFFFFF
        self.regs[REG["MPE_BUSY_LO"]] = stats.mpe_kgroups & 0xFFFFFFFF
        self.regs[REG["MPE_BUSY_HI"]] = stats.mpe_kgroups >> 32
        self.regs[REG["ERROR"]] = 0
        self.regs[REG["AP_CTRL"]] = AP_DONE | AP_IDLE


class XrtDevice(_PortedDevice):
    """An XRT device (Alveo U280 and other Vitis platforms) through ``pyxrt``.

    The kernel is opened in exclusive mode for raw register access
    (``kernel.write_register`` / ``read_register``); each memory port gets one ``pyxrt.bo`` in
    the bank its ``m_axi`` argument is connected to (``kernel.group_id(first_mem_arg + j)``;
    the HBM pseudo-channel for port j on the U280). Port j's buffer address is written to the
    wrapper's MEM{j} register pair directly (raw register access, as for every register).

    Parameters
    ----------
    xclbin : path
        The bitstream container from the Vitis link step.
    cfg : AccelConfig
        The build's accelerator configuration.
    kernel : str
        Kernel name in the xclbin (``hw.contract.KERNEL_NAME``).
    device_index : int
        XRT device (``xrt-smi examine`` lists them).
    first_mem_arg : int
        Kernel argument index of port 0's pointer; ports are the following arguments. Vitis
        numbers arguments in register order: PROG_BASE (0x10) is argument 0, MEM0 (0x30)
        argument 1, so the default is 1.
    port_base_regs : sequence of int
        Register offsets of the ports' 64-bit base addresses (:data:`PORT_BASE_REGS`).
    """

    def __init__(self, xclbin, cfg: AccelConfig, kernel: str = KERNEL_NAME,
                 device_index: int = 0, first_mem_arg: int = 1, port_base_regs=PORT_BASE_REGS):
        try:
            import pyxrt
        except ImportError:
            raise HwflowError("XrtDevice needs XRT's Python bindings (pyxrt): install XRT and "
                              "`source /opt/xilinx/xrt/setup.sh`") from None
        super().__init__(cfg, port_base_regs)
        self._xrt = pyxrt
        self.device = pyxrt.device(device_index)
        uuid = self.device.load_xclbin(str(xclbin))
        self.kernel = pyxrt.kernel(self.device, uuid, kernel,
                                   pyxrt.kernel.cu_access_mode.exclusive)
        self.first_mem_arg = first_mem_arg

    def _alloc(self, j: int, nbytes: int):
        bo = self._xrt.bo(self.device, nbytes, self._xrt.bo.flags.normal,
                          self.kernel.group_id(self.first_mem_arg + j))
        return bo, int(bo.address())

    def _buf_write(self, bo, offset: int, data: bytes) -> None:
        bo.write(data, offset)
        bo.sync(self._xrt.xclBOSyncDirection.XCL_BO_SYNC_BO_TO_DEVICE, len(data), offset)

    def _buf_read(self, bo, offset: int, n: int) -> bytes:
        bo.sync(self._xrt.xclBOSyncDirection.XCL_BO_SYNC_BO_FROM_DEVICE, n, offset)
        return np.asarray(bo.read(n, offset)).tobytes()

    def write_reg(self, offset: int, value: int) -> None:
        self.kernel.write_register(offset, value & 0xFFFFFFFF)

    def read_reg(self, offset: int) -> int:
        return int(self.kernel.read_register(offset)) & 0xFFFFFFFF


class PynqDevice(_PortedDevice):
    """A Zynq / Kria board (KV260) through ``pynq``: an ``Overlay``, ``allocate``, ``MMIO``.

    Parameters
    ----------
    bitfile : path
        The overlay's ``.bit`` (with its ``.hwh`` beside it), or ``.xclbin`` on Kria Ubuntu.
    cfg : AccelConfig
        The build's accelerator configuration.
    ip_name : str
        Name of the accelerator instance in the block design (``overlay.ip_dict`` key); its
        ``phys_addr`` / ``addr_range`` give the register window.
    port_base_regs : sequence of int
        Register offsets of the ports' 64-bit base addresses (:data:`PORT_BASE_REGS`).
    """

    def __init__(self, bitfile, cfg: AccelConfig, ip_name: str = f"{KERNEL_NAME}_0",
                 port_base_regs=PORT_BASE_REGS):
        try:
            import pynq
        except ImportError:
            raise HwflowError("PynqDevice needs the pynq package (on the board: "
                              "`pip install pynq`, or use the Kria-PYNQ image)") from None
        super().__init__(cfg, port_base_regs)
        self._pynq = pynq
        self.overlay = pynq.Overlay(str(bitfile))
        if ip_name not in self.overlay.ip_dict:
            raise HwflowError(f"no IP '{ip_name}' in the overlay (it has: "
                              f"{', '.join(sorted(self.overlay.ip_dict))})")
        ip = self.overlay.ip_dict[ip_name]
        self.mmio = pynq.MMIO(ip["phys_addr"], ip["addr_range"])

    def _alloc(self, j: int, nbytes: int):
        buf = self._pynq.allocate(shape=(nbytes,), dtype=np.uint8)
        return buf, int(buf.physical_address)

    def _buf_write(self, buf, offset: int, data: bytes) -> None:
        buf[offset: offset + len(data)] = np.frombuffer(data, dtype=np.uint8)
        buf.flush()

    def _buf_read(self, buf, offset: int, n: int) -> bytes:
        buf.invalidate()
        return bytes(buf[offset: offset + n])

    def write_reg(self, offset: int, value: int) -> None:
        self.mmio.write(offset, value & 0xFFFFFFFF)

    def read_reg(self, offset: int) -> int:
        return int(self.mmio.read(offset)) & 0xFFFFFFFF


class Build:
    """What the host needs from a build folder (see :func:`load_build`)."""

    def __init__(self, path: Path):
        from hwflow.buildfolder import open_build
        from hwflow.compiler import load_graph

        conf = open_build(path)               # every file checked against its digest
        if conf.get("kind", "mlp") != "mlp":
            raise HwflowError(f"'{path}' is a {conf['kind']} build; run it with "
                              "hwflow.host.generate")
        self.path = path
        self.cfg = AccelConfig(**conf["accel"])
        self.prog_base = int(conf["prog_base"])
        self.input = conf["input"]
        self.outputs = list(conf["outputs"])
        self.memory_map = MemoryMap.from_json((path / "memory_map.json").read_text())
        self.image = (path / "memory_image.bin").read_bytes()
        self.graph = load_graph(path / "ir" / "final")

    def input_scale(self, name: str) -> float:
        return self.graph.nodes[name]["op"].out.scale

    def output_scale(self, name: str):
        return self.graph.nodes[name]["op"].attrs["scale"]

    def input_shape(self, name: str) -> tuple:
        return tuple(self.graph.nodes[name]["op"].out.shape)


def load_build(build_dir) -> Build:
    """Read a build folder: configuration, memory image and map, final IR (for the scales)."""
    return Build(Path(build_dir))


def run(build_dir, inputs: dict, device: Device, timeout_s: float = 10.0,
        stats: dict | None = None) -> dict:
    """Run a compiled model on ``device`` and return its float outputs.

    Parameters
    ----------
    build_dir : path or Build
        Build folder from ``hwflow compile`` (or :func:`load_build`'s result, to run many times
        without re-reading it).
    inputs : dict of str to ndarray
        Float value of the model input by name (``config.json``'s ``input``), of the compiled
        shape.
    device : Device
        :class:`ModelDevice`, :class:`XrtDevice` or :class:`PynqDevice`.
    timeout_s : float
        How long to wait for ``ap_done``.
    stats : dict, optional
        Filled with the counter registers after the run (cycles, mpe_busy, retired).

    Returns
    -------
    dict of str to ndarray
        Output name -> float64 array, dequantized with the output scale: the same numbers as
        ``hwflow.compiler.run`` on the final IR.
    """
    from hwflow.golden import int8 as g8

    b = build_dir if isinstance(build_dir, Build) else load_build(build_dir)
    unknown = set(inputs) - {b.input}
    if unknown or b.input not in inputs:
        raise HwflowError(f"the model takes one input '{b.input}', got "
                          f"{', '.join(map(repr, sorted(inputs))) or 'none'}")
    x = np.asarray(inputs[b.input], dtype=np.float64)
    if x.shape != b.input_shape(b.input):
        raise HwflowError(f"input '{b.input}' has shape {list(x.shape)}, the program was "
                          f"compiled for {list(b.input_shape(b.input))}")
    image = bytearray(b.image)
    write_tensor(image, b.memory_map, b.input, g8.quantize(x, b.input_scale(b.input)))

    device.reserve(len(image))
    device.write_mem(0, bytes(image))
    device.write_reg(REG["PROG_BASE"], b.prog_base)
    device.write_reg(REG["AP_CTRL"], AP_START)
    device.wait_done(timeout_s)
    if device.read_reg(REG["ERROR"]):
        raise HwflowError("the accelerator stopped on an illegal instruction (ERROR = 1); "
                          "is the bitstream built for this configuration?")
    if stats is not None:
        rd = device.read_reg
        stats.update(cycles=rd(REG["CYCLES_LO"]) | rd(REG["CYCLES_HI"]) << 32,
                     mpe_busy=rd(REG["MPE_BUSY_LO"]) | rd(REG["MPE_BUSY_HI"]) << 32,
                     retired=rd(REG["RETIRED"]))

    sb, outs = b.cfg.beat_bytes, {}
    for name in b.outputs:
        r = b.memory_map.region(name)
        # Only the region crosses the bus; unpack_rows is read_tensor's decoder for it.
        q = unpack_rows(device.read_mem(r.addr * sb, r.nbytes), r, b.memory_map.chain_len)
        outs[name] = g8.dequantize(q, b.output_scale(name))
    return outs


def _load_decoder_build(build_dir):
    """``(quantized decoder, lowered decoder)`` of a decoder build folder; the re-lowered image
    must equal the folder's ``memory_image.bin`` (as ``hwflow sim`` checks)."""
    from hwflow.buildfolder import open_build
    from hwflow.compiler.decoder_io import load_saved_decoder
    from hwflow.mapping.llm_lower import lower_decoder

    path = Path(build_dir)
    conf = open_build(path)                   # every file checked against its digest
    if conf.get("kind") != "decoder":
        raise HwflowError(f"'{path}' is not a decoder build; run it with hwflow.host.run")
    qd = load_saved_decoder(path / "decoder" / "quantized")
    lw = lower_decoder(qd, AccelConfig(**conf["accel"]))
    if lw.image != (path / "memory_image.bin").read_bytes():
        raise HwflowError(f"{path}/memory_image.bin does not match its decoder; recompile")
    return qd, lw


def _argmax(logits: np.ndarray) -> int:
    return int(np.argmax(logits))  # first maximum: the lowest token id on ties


def generate(dev: Device, build_dir, prompt: list[int], new_tokens: int,
             timeout_s: float = 10.0) -> dict:
    """Greedy generation with a decoder build on ``dev``: the prompt, then decode steps.

    The memory image is reserved and written once. The runs are
    ``mapping.host_schedule.host_schedule``'s: the prompt as ``mapping.llm_lower.prompt_runs``
    splits it (runs of the largest prefill bucket, the last one ending on the prompt's last
    token), then ``new_tokens`` decode steps of one token each. Per run the host writes the
    token ids (``mapping.llm_lower.decode_memory_writes``), POS, PROG_BASE and ``ap_start``,
    waits for ``ap_done`` and reads the logits of the run's last row; the argmax of their
    first ``vocab`` entries (lowest id on ties) is the next token, the next decode step's
    input.

    Parameters
    ----------
    dev : Device
        :class:`ModelDevice`, :class:`XrtDevice` or :class:`PynqDevice`, for the build's
        configuration.
    build_dir : path
        Decoder build folder from ``hwflow compile`` (``config.json``'s ``"kind": "decoder"``).
    prompt : list of int
        Token ids, at least one.
    new_tokens : int
        Decode steps after the prompt (``>= 0``).
    timeout_s : float
        How long to wait for ``ap_done`` per run.

    Returns
    -------
    dict
        ``tokens``: the ``new_tokens + 1`` generated ids (the prompt's next token, then one per
        decode step, like ``reports/sim.json``'s tokens); ``logits``: per run, the int8
        ``[vocab]`` logits of its last row; ``cycles``: per run, the CYCLES register.

    Raises
    ------
    HwflowError
        Not a decoder build, an image that does not match its decoder, a bad prompt (empty, an
        id outside the vocabulary, past ``max_context``), ERROR set after a run, or no
        ``ap_done`` in time.
    """
    from hwflow.mapping.host_schedule import host_schedule
    from hwflow.mapping.llm_lower import decode_memory_writes, read_logits

    _, lw = _load_decoder_build(build_dir)
    prompt = [int(t) for t in prompt]
    if new_tokens < 0:
        raise HwflowError(f"new_tokens must be >= 0, got {new_tokens}")
    if not prompt:
        raise HwflowError("the prompt is empty; give at least one token id")

    mem = SimpleNamespace(read=dev.read_mem)  # read_logits' ``read(byte_addr, nbytes)``
    out: dict = {"tokens": [], "logits": [], "cycles": []}

    def one_run(ids: list[int], pos: int) -> np.ndarray:
        try:
            st = decode_memory_writes(lw, ids, pos)
        except ValueError as e:
            raise HwflowError(str(e)) from None
        for addr, data in st.writes:
            dev.write_mem(addr, data)
        dev.write_reg(REG["POS"], st.pos)
        dev.write_reg(REG["PROG_BASE"], st.prog_base)
        dev.write_reg(REG["AP_CTRL"], AP_START)
        dev.wait_done(timeout_s)
        if dev.read_reg(REG["ERROR"]):
            raise HwflowError(f"the accelerator stopped with ERROR = {dev.read_reg(REG['ERROR'])}"
                              f" (run at POS {pos}); is the bitstream built for this "
                              "configuration?")
        rd = dev.read_reg
        out["cycles"].append(rd(REG["CYCLES_LO"]) | rd(REG["CYCLES_HI"]) << 32)
        logits = read_logits(st, mem)
        out["logits"].append(logits)
        return logits

    dev.reserve(len(lw.image))
    dev.write_mem(0, lw.image)
    for r in host_schedule(len(prompt), lw.buckets, new_tokens, lw.recurrent):
        # a decode step's input is the token the run before it gave
        logits = one_run([out["tokens"][-1]] if r.is_decode else prompt[r.pos:r.pos + r.tokens],
                         r.pos)
        if r.pos + r.tokens >= len(prompt):     # the prompt's last run, then every decode step
            out["tokens"].append(_argmax(logits))
    return out
