"""Xilinx vendor projects from a compiled build folder, without Vivado or Vitis: every file the
scripts reference exists, kernel.xml and link.cfg agree with the generated kernel Verilog, the
tool-missing message and exit codes, and the build command run through stand-in tools.

The resource fit check (Yosys synth_xilinx, hwflow.export.fit) is replaced by a stub here; its
own tests cover it.
"""

from __future__ import annotations

import re
import shutil
import sys
import types
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from hwflow.cli import main
from hwflow.export import build_bitstream
from hwflow.flow import compile_model

# a file name, with the Tcl variable it is relative to ($here: the project folder; $work: the
# scratch folder _x/ that the script itself fills)
FILE_REF = re.compile(r"(?:\$(\w+)/)?([\w./-]+\.(?:v|sv|xml|tcl|cfg|xdc|sh))\b")


@pytest.fixture(autouse=True)
def fit_stub(monkeypatch):
    calls = []
    stub = types.ModuleType("hwflow.export.fit")

    def xilinx_utilization(verilog, top, board):
        calls.append((top, "module hwflow_accel(" in verilog, board.name))
        return {k: {"used": 1, "available": board.resources[k]} for k in board.resources}

    def check_fit(util, board):
        calls.append(("check", board.name))

    stub.xilinx_utilization, stub.check_fit = xilinx_utilization, check_fit
    monkeypatch.setitem(sys.modules, "hwflow.export.fit", stub)
    monkeypatch.setattr(sys.modules["hwflow.export"], "fit", stub, raising=False)
    return calls


def _no_vendor_tools():
    if shutil.which("vivado") or shutil.which("v++"):
        pytest.skip("Vivado/Vitis installed: the tool-missing path cannot be tested here")


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    root = tmp_path_factory.mktemp("xilinx")
    return {b: compile_model(example="mlp", board=b, out=root / b)[0] for b in ("u280", "kv260")}


def verilog_ports(text: str, module: str) -> dict[str, tuple[str, int]]:
    body = text[text.index(f"module {module}("):]
    body = body[:body.index("endmodule")]
    return {m.group(3): (m.group(1), int(m.group(2) or 0) + 1)
            for m in re.finditer(r"^\s*(input|output)\s+(?:\[(\d+):0\]\s+)?(\w+);", body, re.M)}


def _referenced_files(folder: Path, scripts) -> set[str]:
    refs = set()
    for s in scripts:
        for line in (folder / s).read_text().splitlines():
            if line.lstrip().startswith("#"):
                continue
            for var, ref in FILE_REF.findall(line):
                if var in ("", "here"):
                    refs.add(ref)
    return refs


def test_u280_vitis_project(builds, fit_stub, capsys):
    _no_vendor_tools()
    out = builds["u280"]
    assert main(["bitstream", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert "v++ not found" in lines[-1] and "make -C" in lines[-1]
    assert ("hwflow_accel", True, "u280") in fit_stub and ("check", "u280") in fit_stub
    assert (out / "reports" / "utilization.json").is_file()

    d = out / "vitis"
    scripts = ("package_xo.tcl", "link.cfg", "Makefile")
    for f in scripts + ("kernel.xml", "README.md", "src/hwflow_kernel.v"):
        assert (d / f).is_file(), f
    refs = _referenced_files(d, scripts)
    assert {"src/hwflow_kernel.v", "kernel.xml", "package_xo.tcl", "link.cfg"} <= refs
    for ref in refs:
        assert (d / ref).is_file(), f"a script references {ref}, which is not in {d}"

    import json
    accel = json.loads((out / "config.json").read_text())["accel"]
    n, w = accel["mem_ports"], accel["port_bytes"]
    ports = verilog_ports((d / "src/hwflow_kernel.v").read_text(), "hwflow_kernel")
    assert ports["ap_clk"] == ("input", 1) and ports["ap_rst_n"] == ("input", 1)
    assert ports["interrupt"] == ("output", 1)

    kernel = ET.parse(d / "kernel.xml").getroot().find("kernel")
    assert kernel.get("name") == "hwflow_kernel"
    xml_ports = {p.get("name"): p for p in kernel.find("ports")}
    assert set(xml_ports) == {"s_axi_control"} | {f"m_axi_gmem{j}" for j in range(n)}
    for name, p in xml_ports.items():
        # every interface named in kernel.xml exists in the Verilog with that data width
        wdata = ports[f"{name}_wdata"]
        assert wdata == ("input" if p.get("mode") == "slave" else "output",
                         int(p.get("dataWidth")))
        assert ports[f"{name}_rdata"][1] == int(p.get("dataWidth"))
        if p.get("mode") == "master":
            assert ports[f"{name}_araddr"] == ("output", 64)
            assert int(p.get("dataWidth")) == 8 * w
    lite_span = 1 << ports["s_axi_control_awaddr"][1]
    assert int(xml_ports["s_axi_control"].get("range"), 16) == lite_span
    args = sorted(kernel.find("args"), key=lambda a: int(a.get("id")))
    assert [a.get("name") for a in args] == ["prog_base"] + [f"mem{j}" for j in range(n)]
    assert int(args[0].get("offset"), 16) == 0x10            # PROG_BASE (architecture.md)
    spans = []
    for a in args:
        off, size = int(a.get("offset"), 16), int(a.get("size"), 16)
        assert off % 4 == 0 and off + size <= lite_span
        spans.append((off, off + size))
        if a.get("name").startswith("mem"):
            assert a.get("port") == f"m_axi_gmem{a.get('name')[3:]}"
            assert a.get("addressQualifier") == "1" and size == 8
    spans.sort()
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False)), "args overlap"
    # the same offsets in the IP packaging script
    tcl = (d / "package_xo.tcl").read_text()
    for a in args:
        assert re.search(rf"\{{{a.get('name')} {a.get('offset')} ", tcl), a.get("name")

    link = (d / "link.cfg").read_text()
    assert "[connectivity]" in link and "nk=hwflow_kernel:1" in link
    for j in range(n):
        assert f"sp=hwflow_kernel_1.m_axi_gmem{j}:HBM[{j}]" in link
    assert "freqHz=300000000:hwflow_kernel_1.ap_clk" in link
    make = (d / "Makefile").read_text()
    assert "xilinx_u280_gen3x16_xdma_1_202211_1" in make
    assert "-source package_xo.tcl" in make and "--config link.cfg" in make
    assert "xcu280-fsvh2892-2L-e" in tcl
    assert not list(out.glob(".vitis*")), "temporary folder left behind"


def test_platform_override_and_require_bitstream(builds, monkeypatch, capsys):
    _no_vendor_tools()
    out = builds["u280"]
    monkeypatch.setenv("HWFLOW_XILINX_PLATFORM", "my_u280_platform")
    assert main(["bitstream", str(out), "--require-bitstream"]) == 3
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    assert "not found" in captured.out.strip().splitlines()[-1]
    assert "my_u280_platform" in (out / "vitis" / "Makefile").read_text()


def test_kv260_vivado_project(builds, capsys):
    _no_vendor_tools()
    out = builds["kv260"]
    r = build_bitstream(out)
    assert r["exit_code"] == 0 and "vivado not found" in r["summary"][-1]
    d = out / "vivado"
    scripts = ("create_project.tcl", "build.sh")
    refs = _referenced_files(d, scripts)
    assert {"src/hwflow_kernel.v", "constraints/hwflow.xdc", "create_project.tcl"} <= refs
    for ref in refs:
        assert (d / ref).is_file(), f"a script references {ref}, which is not in {d}"
    tcl = (d / "create_project.tcl").read_text()
    assert "-part xck26-sfvc784-2LV-c" in tcl
    for piece in ("zynq_ultra_ps_e", "-type module -reference hwflow_kernel",
                  "M_AXI_HPM0_FPD", "S_AXI_HP0_FPD", "pl_ps_irq0",
                  "PSU__CRL_APB__PL0_REF_CTRL__FREQMHZ {250}", "assign_bd_address",
                  "validate_bd_design", "make_wrapper", "write_bitstream"):
        assert piece in tcl, piece
    ports = verilog_ports((d / "src/hwflow_kernel.v").read_text(), "hwflow_kernel")
    for pin in re.findall(r"get_bd_(?:intf_)?pins \$k/(\w+)", tcl):
        assert pin in ports or f"{pin}_awvalid" in ports, f"block design uses missing pin {pin}"
    # the four S_AXI_HP ports (SAXIGP2..5) at 128 bit, one AXI master of the kernel each
    for j in range(4):
        assert ports[f"m_axi_gmem{j}_wdata"] == ("output", 128)
        assert f"S_AXI_HP{j}_FPD" in tcl and f"PSU__SAXIGP{2 + j}__DATA_WIDTH {{128}}" in tcl
    assert "m_axi_gmem4_wdata" not in ports


def test_build_runs_when_tools_present(builds, tmp_path, monkeypatch):
    """Stand-in vivado / v++ on PATH: the documented command runs and the xclbin is reported."""
    if not shutil.which("make"):
        pytest.skip("make not installed")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "vivado").write_text("#!/bin/sh\ntouch hwflow_kernel.xo\n")
    (bin_dir / "v++").write_text(
        '#!/bin/sh\nwhile [ "$1" != "-o" ]; do shift; done\ntouch "$2"\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{Path(shutil.which('make')).parent}:/usr/bin:/bin")
    r = build_bitstream(builds["u280"], require_bitstream=True)
    assert r["exit_code"] == 0, r["summary"]
    assert r["bitstream"].endswith("hwflow.xclbin") and Path(r["bitstream"]).is_file()


def test_register_table_is_the_contract():
    """The projects' register table is generated from hw.contract: every register the kernel
    and the accelerator map is listed at its offset (POS and TLMM_BUSY were once missing)."""
    from hwflow.export.xilinx import _register_table
    from hwflow.hw.config import AccelConfig
    from hwflow.hw.contract import KERNEL_REG, REG, mem_arg_offset

    table = _register_table(AccelConfig(mem_ports=4))
    rows = {r.split(" | ")[1]: r.split(" | ")[0].lstrip("| ") for r in table.splitlines()[2:]}
    for name, off in {**REG, **KERNEL_REG}.items():
        if name == "MEM":
            continue
        base = name.removesuffix("_LO").removesuffix("_HI")
        assert base in rows and f"0x{off:02X}" in rows[base], (name, rows.get(base))
    assert rows["MEM3"] == f"0x{mem_arg_offset(3):02X}/0x{mem_arg_offset(3) + 4:02X}"
    offsets = [int(o.split("/")[0], 16) for o in rows.values()]
    assert offsets == sorted(offsets)
