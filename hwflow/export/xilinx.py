"""Xilinx vendor projects: a Vitis RTL kernel for the Alveo U280 (``flow: vitis``) and a Vivado
block-design project for Zynq UltraScale+ / Versal boards (``flow: vivado``).

``export_xilinx`` first estimates the accelerator's resources (Yosys ``synth_xilinx``, through
:mod:`hwflow.export.fit`) and refuses a design that does not fit; then it writes, atomically,

- ``OUT/vitis/``: ``src/hwflow_kernel.v``, ``kernel.xml``, ``package_xo.tcl``, ``link.cfg``,
  ``Makefile`` (the build command: ``make -C OUT/vitis``), ``README.md``;
- ``OUT/vivado/``: ``src/hwflow_kernel.v``, ``create_project.tcl``, ``constraints/hwflow.xdc``,
  ``build.sh`` (the build command: ``sh OUT/vivado/build.sh``), ``README.md``;

and runs the build command when the vendor tools are on ``PATH``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from hwflow.buildfolder import atomic_dir, write_json
from hwflow.errors import HwflowError
from hwflow.hw.config import AccelConfig
from hwflow.hw.contract import KERNEL_REGISTER_DOC, REG, REGISTER_DOC, register_rows
from hwflow.hw.vitis_kernel import (
    CONTROL_PORT,
    CONTROL_RANGE,
    KERNEL_NAME,
    KERNEL_REG,
    generate_kernel_verilog,
    master_name,
    mem_arg_offset,
)
from hwflow.rtl_cache import cached_verilog

__all__ = ["DEFAULT_U280_PLATFORM", "export_xilinx", "write_vitis_project",
           "write_vivado_project", "kernel_verilog"]

DEFAULT_U280_PLATFORM = "xilinx_u280_gen3x16_xdma_1_202211_1"
PLATFORM_ENV = "HWFLOW_XILINX_PLATFORM"
ACCEL_TOP = "hwflow_accel"
EXIT_NO_TOOL = 3
HBM_PCS = 32                 # U280: 32 HBM pseudo-channels, HBM[0..31]
ZYNQMP_HP_PORTS = 4          # S_AXI_HP0..3_FPD


def kernel_verilog(cfg: AccelConfig, freq_hz: int) -> str:
    """``hwflow_kernel`` Verilog, cached like the accelerator's (the U280 kernel takes ~10 s)."""
    return cached_verilog("kernel-", [cfg.to_dict(), freq_hz],
                          lambda: generate_kernel_verilog(cfg, freq_hz=freq_hz))


# --- kernel.xml ------------------------------------------------------------------------------

def kernel_xml(cfg: AccelConfig) -> str:
    """The Vitis kernel description: ports with widths, arguments with AXI4-Lite offsets."""
    ports = [f'      <port name="{CONTROL_PORT}" mode="slave" range="{CONTROL_RANGE:#x}" '
             f'dataWidth="32" portType="addressable" base="0x0"/>']
    args = [f'      <arg name="prog_base" addressQualifier="0" id="0" port="{CONTROL_PORT}" '
            f'size="0x4" offset="{KERNEL_REG["PROG_BASE"]:#x}" type="uint" hostOffset="0x0" '
            f'hostSize="0x4"/>']
    for j in range(cfg.mem_ports):
        ports.append(f'      <port name="{master_name(j)}" mode="master" '
                     f'range="0xFFFFFFFFFFFFFFFF" dataWidth="{8 * cfg.port_bytes}" '
                     f'portType="addressable" base="0x0"/>')
        args.append(f'      <arg name="mem{j}" addressQualifier="1" id="{j + 1}" '
                    f'port="{master_name(j)}" size="0x8" offset="{mem_arg_offset(j):#x}" '
                    f'type="void*" hostOffset="0x0" hostSize="0x8"/>')
    return "\n".join([
        '<?xml version="1.0" encoding="UTF-8"?>',
        "<!-- hwflow accelerator as a Vitis RTL kernel (ap_ctrl_hs). prog_base: super-beat",
        "     address of the program; mem<j>: buffer of memory port j (its image stripe) -->",
        '<root versionMajor="1" versionMinor="6">',
        f'  <kernel name="{KERNEL_NAME}" language="ip_c" '
        f'vlnv="hwflow.dev:kernel:{KERNEL_NAME}:1.0" attributes="" '
        'preferredWorkGroupSizeMultiple="0" workGroupSize="1" interrupt="true" '
        'hwControlProtocol="ap_ctrl_hs">',
        "    <ports>", *ports, "    </ports>",
        "    <args>", *args, "    </args>",
        "  </kernel>",
        "</root>",
        "",
    ])


# --- Vitis (U280) ----------------------------------------------------------------------------

def _package_xo_tcl(cfg: AccelConfig, board) -> str:
    busifs = " ".join([CONTROL_PORT] + [master_name(j) for j in range(cfg.mem_ports)])
    regs = [("prog_base", KERNEL_REG["PROG_BASE"], 32, "")]
    regs += [(f"mem{j}", mem_arg_offset(j), 64, master_name(j)) for j in range(cfg.mem_ports)]
    reg_lines = "\n".join(f"    {{{n} {off:#x} {bits} {{{bus}}}}}" for n, off, bits, bus in regs)
    return f"""\
# Packages src/{KERNEL_NAME}.v as the Vitis RTL kernel {KERNEL_NAME}.xo.
# Run by `make` in this folder: vivado -mode batch -source package_xo.tcl
set here [file normalize [file dirname [info script]]]
set work $here/_x/package
file delete -force $work

create_project -force kernel_pack $work/project -part {board.part}
add_files -norecurse $here/src/{KERNEL_NAME}.v
set_property top {KERNEL_NAME} [current_fileset]
update_compile_order -fileset sources_1

# AXI interfaces, ap_clk and ap_rst_n are inferred from the port names
ipx::package_project -root_dir $work/ip -vendor hwflow.dev -library kernel \\
    -taxonomy /KernelIP -import_files -set_current false
ipx::unload_core $work/ip/component.xml
ipx::edit_ip_in_project -upgrade true -name kernel_edit -directory $work/edit \\
    $work/ip/component.xml
set core [ipx::current_core]
set_property core_revision 1 $core
foreach busif {{{busifs}}} {{
    ipx::associate_bus_interfaces -busif $busif -clock ap_clk $core
}}
ipx::associate_bus_interfaces -clock ap_clk -reset ap_rst_n $core

# kernel arguments as registers of s_axi_control (offsets as in kernel.xml)
set mm [ipx::add_memory_map {CONTROL_PORT} $core]
set_property slave_memory_map_ref {CONTROL_PORT} \\
    [ipx::get_bus_interfaces {CONTROL_PORT} -of_objects $core]
set block [ipx::add_address_block reg0 $mm]
set_property range {CONTROL_RANGE:#x} $block
foreach reg {{
{reg_lines}
}} {{
    lassign $reg name offset bits busif
    set r [ipx::add_register $name $block]
    set_property address_offset $offset $r
    set_property size $bits $r
    if {{$busif ne ""}} {{
        set p [ipx::add_register_parameter ASSOCIATED_BUSIF $r]
        set_property value $busif $p
    }}
}}

set_property sdx_kernel true $core
set_property sdx_kernel_type rtl $core
set_property ipi_drc {{ignore_freq_hz true}} $core
set_property vitis_drc {{ctrl_protocol ap_ctrl_hs}} $core
ipx::create_xgui_files $core
ipx::update_checksums $core
ipx::check_integrity -kernel $core
ipx::save_core $core
close_project -delete

package_xo -force -xo_path $here/{KERNEL_NAME}.xo -kernel_name {KERNEL_NAME} \\
    -ip_directory $work/ip -kernel_xml $here/kernel.xml
"""


def _link_cfg(cfg: AccelConfig, board) -> str:
    cu = f"{KERNEL_NAME}_1"
    sps = "\n".join(f"sp={cu}.{master_name(j)}:HBM[{j}]" for j in range(cfg.mem_ports))
    hz = int(round(board.clock_mhz * 1e6))
    return f"""\
# v++ link configuration for {board.name}: one compute unit; AXI4 master j on HBM
# pseudo-channel j, so the {cfg.mem_ports} stripes of the memory image are read in parallel
# ({cfg.mem_ports} x {8 * cfg.port_bytes} bit).
[connectivity]
nk={KERNEL_NAME}:1:{cu}
{sps}

[clock]
freqHz={hz}:{cu}.ap_clk
"""


def _vitis_makefile(board, platform: str) -> str:
    return f"""\
# Builds hwflow.xclbin for {board.name} ({board.part}): `make` here, or `make -C <this folder>`.
# Needs Vivado (package_xo.tcl) and Vitis v++ on PATH. Override the platform with
# `make PLATFORM=...` (or $HWFLOW_XILINX_PLATFORM), the target with `make TARGET=hw_emu`.
PLATFORM ?= $(or $(HWFLOW_XILINX_PLATFORM),{platform})
TARGET ?= hw
VIVADO ?= vivado
VPP ?= v++

all: hwflow.xclbin

{KERNEL_NAME}.xo: src/{KERNEL_NAME}.v kernel.xml package_xo.tcl
\t$(VIVADO) -mode batch -nojournal -log _x/package.log -source package_xo.tcl

hwflow.xclbin: {KERNEL_NAME}.xo link.cfg
\t$(VPP) -l -t $(TARGET) --platform $(PLATFORM) --config link.cfg \\
\t\t--temp_dir _x/link --log_dir _x/logs -o $@ {KERNEL_NAME}.xo

clean:
\trm -rf _x .Xil .ipcache {KERNEL_NAME}.xo hwflow.xclbin hwflow.xclbin.* *.log *.jou

.PHONY: all clean
"""


def _register_table(cfg: AccelConfig) -> str:
    """The kernel's s_axi_control registers (hw.contract's tables), the MEM{j} pointers of
    this configuration's ports included."""
    mem = [(mem_arg_offset(j), f"0x{mem_arg_offset(j):02X}/0x{mem_arg_offset(j) + 4:02X}",
            f"MEM{j}", "RW", f"64-bit device address of buffer {j} ({master_name(j)})")
           for j in range(cfg.mem_ports)]
    rows = register_rows({**REG, **KERNEL_REG}, {**REGISTER_DOC, **KERNEL_REGISTER_DOC}, mem)
    return "\n".join(["| offset | name | access | meaning |", "|---|---|---|---|"]
                     + [f"| {o} | {n} | {a} | {m} |" for o, n, a, m in rows])


def _striping_note(cfg: AccelConfig) -> str:
    sb, w = cfg.beat_bytes, cfg.port_bytes
    return (f"The memory image (`../memory_image.bin`, layout in `../memory_map.json`) is striped "
            f"over {cfg.mem_ports} buffer(s): buffer `j` holds bytes `[s*{w}, (s+1)*{w})` = image "
            f"bytes `[s*{sb} + j*{w}, s*{sb} + (j+1)*{w})` for every super-beat `s`.")


def _vitis_readme(cfg: AccelConfig, board, platform: str) -> str:
    return f"""\
# hwflow Vitis project for {board.name}

The accelerator of this build as a Vitis RTL kernel `{KERNEL_NAME}` ({board.part},
{board.clock_mhz:g} MHz kernel clock, platform `{platform}`).

Build (needs Vivado and Vitis on PATH; several hours for the U280):

    make -C <this folder>            # -> {KERNEL_NAME}.xo, then hwflow.xclbin

| file | what |
|---|---|
| `src/{KERNEL_NAME}.v` | generated: kernel top + accelerator + {cfg.mem_ports} AXI4 masters |
| `kernel.xml` | kernel arguments and ports for `package_xo` |
| `package_xo.tcl` | Vivado IP packaging into `{KERNEL_NAME}.xo` |
| `link.cfg` | `v++ --link` config: {cfg.mem_ports} masters on HBM[0..{cfg.mem_ports - 1}], clock |
| `Makefile` | the build (`PLATFORM=...` overrides the platform) |

Ports: `ap_clk`, `ap_rst_n`, `s_axi_control` (AXI4-Lite, 4 KiB), `m_axi_gmem0..{cfg.mem_ports - 1}`
(AXI4, {8 * cfg.port_bytes}-bit data, 64-bit addresses), `interrupt`.

Arguments (XRT `kernel(prog_base, mem0, ...)`): `prog_base` (u32), then one buffer per port;
allocate buffer `j` in the bank of `kernel.group_id(1 + j)` (HBM[j]).
{_striping_note(cfg)}

Control registers:

{_register_table(cfg)}
"""


def write_vitis_project(d: Path, cfg: AccelConfig, board, verilog: str) -> None:
    """Write the U280 Vitis project into folder ``d``."""
    if cfg.mem_ports > HBM_PCS:
        raise HwflowError(f"{cfg.mem_ports} memory ports but the U280 has {HBM_PCS} HBM "
                          "pseudo-channels")
    platform = os.environ.get(PLATFORM_ENV) or DEFAULT_U280_PLATFORM
    (d / "src").mkdir(parents=True)
    (d / "src" / f"{KERNEL_NAME}.v").write_text(verilog)
    (d / "kernel.xml").write_text(kernel_xml(cfg))
    (d / "package_xo.tcl").write_text(_package_xo_tcl(cfg, board))
    (d / "link.cfg").write_text(_link_cfg(cfg, board))
    (d / "Makefile").write_text(_vitis_makefile(board, platform))
    (d / "README.md").write_text(_vitis_readme(cfg, board, platform))


# --- Vivado (KV260, VCK190) ------------------------------------------------------------------

def _zynqmp_bd(cfg: AccelConfig, board) -> str:
    """Zynq UltraScale+ MPSoC: HPM0_FPD -> SmartConnect -> control; master j -> S_AXI_HPj_FPD
    (straight into the DDR controller); pl_clk0 clocks everything; interrupt -> pl_ps_irq0."""
    if cfg.mem_ports > ZYNQMP_HP_PORTS:
        raise HwflowError(f"{cfg.mem_ports} memory ports but the Zynq UltraScale+ PS has "
                          f"{ZYNQMP_HP_PORTS} S_AXI_HP ports")
    mhz = f"{board.clock_mhz:g}"
    hp_cfg = " ".join(f"CONFIG.PSU__USE__S_AXI_GP{2 + j} {{1}} "
                      f"CONFIG.PSU__SAXIGP{2 + j}__DATA_WIDTH {{{8 * cfg.port_bytes}}}"
                      for j in range(cfg.mem_ports))
    hp_clk = " ".join(f"[get_bd_pins $ps/saxihp{j}_fpd_aclk]" for j in range(cfg.mem_ports))
    hp_links = "\n".join(f"connect_bd_intf_net [get_bd_intf_pins $k/{master_name(j)}] "
                         f"[get_bd_intf_pins $ps/S_AXI_HP{j}_FPD]" for j in range(cfg.mem_ports))
    preset = board.name.lower()
    return f"""\
# Zynq UltraScale+ MPSoC (board preset when the {preset} board files are installed)
set ps [create_bd_cell -type ip -vlnv xilinx.com:ip:zynq_ultra_ps_e zynq_ultra_ps_e_0]
if {{$board_part ne ""}} {{
    apply_bd_automation -rule xilinx.com:bd_rule:zynq_ultra_ps_e \\
        -config {{apply_board_preset "1"}} $ps
}}
# HPM0_FPD (32-bit) for the control registers, S_AXI_HP<j>_FPD ({8 * cfg.port_bytes}-bit) to DDR,
# pl_clk0 at {mhz} MHz, pl_ps_irq0 for the kernel interrupt
set_property -dict [list \\
    CONFIG.PSU__USE__M_AXI_GP0 {{1}} CONFIG.PSU__MAXIGP0__DATA_WIDTH {{32}} \\
    CONFIG.PSU__USE__M_AXI_GP1 {{0}} CONFIG.PSU__USE__M_AXI_GP2 {{0}} \\
    {hp_cfg} \\
    CONFIG.PSU__FPGA_PL0_ENABLE {{1}} CONFIG.PSU__CRL_APB__PL0_REF_CTRL__FREQMHZ {{{mhz}}} \\
    CONFIG.PSU__USE__IRQ0 {{1}} \\
] $ps

set k [create_bd_cell -type module -reference {KERNEL_NAME} {KERNEL_NAME}_0]
set rst [create_bd_cell -type ip -vlnv xilinx.com:ip:proc_sys_reset proc_sys_reset_0]
set sc [create_bd_cell -type ip -vlnv xilinx.com:ip:smartconnect smartconnect_0]
set_property -dict [list CONFIG.NUM_SI {{1}} CONFIG.NUM_MI {{1}}] $sc

connect_bd_net [get_bd_pins $ps/pl_clk0] [get_bd_pins $ps/maxihpm0_fpd_aclk] {hp_clk} \\
    [get_bd_pins $k/ap_clk] [get_bd_pins $sc/aclk] [get_bd_pins $rst/slowest_sync_clk]
connect_bd_net [get_bd_pins $ps/pl_resetn0] [get_bd_pins $rst/ext_reset_in]
connect_bd_net [get_bd_pins $rst/peripheral_aresetn] [get_bd_pins $k/ap_rst_n] \\
    [get_bd_pins $sc/aresetn]
connect_bd_intf_net [get_bd_intf_pins $ps/M_AXI_HPM0_FPD] [get_bd_intf_pins $sc/S00_AXI]
connect_bd_intf_net [get_bd_intf_pins $sc/M00_AXI] [get_bd_intf_pins $k/{CONTROL_PORT}]
{hp_links}
connect_bd_net [get_bd_pins $k/interrupt] [get_bd_pins $ps/pl_ps_irq0]

assign_bd_address
# control registers: 4 KiB at the start of the HPM0_FPD window
foreach seg [get_bd_addr_segs -quiet -of_objects [get_bd_addr_spaces $ps/Data] \\
                 -filter {{NAME =~ "*{KERNEL_NAME}_0*"}}] {{
    set_property range 4K $seg
    set_property offset 0xA0000000 $seg
}}
"""


def _versal_bd(cfg: AccelConfig, board) -> str:
    """Versal CIPS: M_AXI_FPD -> SmartConnect -> control; master j -> an AXI NoC slave port
    routed to the DDR memory controller; pl0_ref_clk clocks everything; interrupt -> irq0."""
    mhz = f"{board.clock_mhz:g}"
    n = cfg.mem_ports
    noc_ports = "\n".join(
        f"set_property -dict [list CONFIG.CONNECTIONS {{MC_0 {{read_bw {{1720}} write_bw "
        f"{{1720}}}}}} CONFIG.CATEGORY {{pl}}] [get_bd_intf_pins $noc/S{j:02d}_AXI]\n"
        f"connect_bd_intf_net [get_bd_intf_pins $k/{master_name(j)}] "
        f"[get_bd_intf_pins $noc/S{j:02d}_AXI]" for j in range(n))
    busif = ":".join(f"S{j:02d}_AXI" for j in range(n))
    return f"""\
# Versal CIPS with one AXI NoC to the DDR4 memory controller (board preset when the {board.name}
# board files are installed; the DDR4 controller needs them for its pin and timing data)
set ps [create_bd_cell -type ip -vlnv xilinx.com:ip:versal_cips versal_cips_0]
set noc [create_bd_cell -type ip -vlnv xilinx.com:ip:axi_noc axi_noc_0]
if {{$board_part ne ""}} {{
    apply_bd_automation -rule xilinx.com:bd_rule:cips -config {{board_preset {{Yes}} \\
        boot_config {{Custom}} configure_noc {{Add new AXI NoC}} debug_config {{JTAG}} \\
        design_flow {{Full System}} mc_type {{DDR}} num_mc_ddr {{1}} num_mc_lpddr {{None}} \\
        pl_clocks {{None}} pl_resets {{None}}}} $ps
    delete_bd_objs $noc
    set noc [get_bd_cells -filter {{VLNV =~ "*axi_noc*"}}]
}}
# M_AXI_FPD for the control registers, PL clock 0 at {mhz} MHz, one fabric reset, PL IRQ 0
set_property CONFIG.PS_PMC_CONFIG {{ \\
    PS_USE_M_AXI_FPD 1 PS_USE_PMCPL_CLK0 1 PMC_CRP_PL0_REF_CTRL_FREQMHZ {mhz} \\
    PS_NUM_FABRIC_RESETS 1 PS_IRQ_USAGE {{{{CH0 1}}}} \\
}} $ps
# {n} more NoC slave port(s) for the kernel's AXI4 master(s), routed to memory controller MC_0
set si [get_property CONFIG.NUM_SI $noc]
set nclk [get_property CONFIG.NUM_CLKS $noc]
set_property -dict [list CONFIG.NUM_SI [expr {{$si + {n}}}] CONFIG.NUM_CLKS [expr {{$nclk + 1}}] \\
    CONFIG.NUM_MC {{1}}] $noc

set k [create_bd_cell -type module -reference {KERNEL_NAME} {KERNEL_NAME}_0]
set rst [create_bd_cell -type ip -vlnv xilinx.com:ip:proc_sys_reset proc_sys_reset_0]
set sc [create_bd_cell -type ip -vlnv xilinx.com:ip:smartconnect smartconnect_0]
set_property -dict [list CONFIG.NUM_SI {{1}} CONFIG.NUM_MI {{1}}] $sc
{noc_ports}
set pl_clk [get_bd_pins $noc/aclk$nclk]
set_property CONFIG.ASSOCIATED_BUSIF {{{busif}}} $pl_clk

connect_bd_net [get_bd_pins $ps/pl0_ref_clk] [get_bd_pins $ps/m_axi_fpd_aclk] $pl_clk \\
    [get_bd_pins $k/ap_clk] [get_bd_pins $sc/aclk] [get_bd_pins $rst/slowest_sync_clk]
connect_bd_net [get_bd_pins $ps/pl0_resetn] [get_bd_pins $rst/ext_reset_in]
connect_bd_net [get_bd_pins $rst/peripheral_aresetn] [get_bd_pins $k/ap_rst_n] \\
    [get_bd_pins $sc/aresetn]
connect_bd_intf_net [get_bd_intf_pins $ps/M_AXI_FPD] [get_bd_intf_pins $sc/S00_AXI]
connect_bd_intf_net [get_bd_intf_pins $sc/M00_AXI] [get_bd_intf_pins $k/{CONTROL_PORT}]
connect_bd_net [get_bd_pins $k/interrupt] [get_bd_pins $ps/pl_ps_irq0]

assign_bd_address
"""


def _create_project_tcl(cfg: AccelConfig, board) -> str:
    if board.family.startswith("versal"):
        bd, preset = _versal_bd(cfg, board), f"xilinx.com:{board.name}:*"
    elif board.family.startswith("zynq-ultrascale"):
        bd = _zynqmp_bd(cfg, board)
        preset = f"xilinx.com:{board.name}_som:*" if board.name == "kv260" \
            else f"xilinx.com:{board.name}:*"
    else:
        raise HwflowError(f"board '{board.name}' (family {board.family}) has no processing "
                          "system template for the Vivado flow (known: Zynq UltraScale+, Versal)")
    proj = f"hwflow_{board.name}"
    return f"""\
# Creates the Vivado project for {board.name} ({board.part}): the hwflow kernel as a module
# reference in a block design with the processing system, then runs through write_bitstream.
# Run by build.sh: vivado -mode batch -source create_project.tcl
set here [file normalize [file dirname [info script]]]
set jobs [expr {{[info exists ::env(JOBS)] ? $::env(JOBS) : 8}}]

create_project -force {proj} $here/project -part {board.part}
set board_part [lindex [lsort [get_board_parts -quiet {preset}]] end]
if {{$board_part ne ""}} {{ set_property board_part $board_part [current_project] }}
add_files -norecurse $here/src/{KERNEL_NAME}.v
add_files -fileset constrs_1 -norecurse $here/constraints/hwflow.xdc
update_compile_order -fileset sources_1

create_bd_design hwflow_bd
{bd}
validate_bd_design
save_bd_design

set wrapper [make_wrapper -files [get_files hwflow_bd.bd] -top]
add_files -norecurse $wrapper
set_property top hwflow_bd_wrapper [current_fileset]
update_compile_order -fileset sources_1

launch_runs impl_1 -to_step write_bitstream -jobs $jobs
wait_on_run impl_1
if {{[get_property PROGRESS [get_runs impl_1]] ne "100%"}} {{
    error "implementation did not finish; see $here/project/{proj}.runs/impl_1"
}}
file copy -force [get_property DIRECTORY [get_runs impl_1]]/hwflow_bd_wrapper.bit \\
    $here/hwflow.bit
# hardware description for the host software (PetaLinux / Vitis platform / xsct)
write_hw_platform -fixed -include_bit -force -file $here/hwflow.xsa
"""


def _xdc(board) -> str:
    return f"""\
# {board.name}: the design has no package pins of its own (clock, reset and interrupt come from
# the processing system); these are bitstream settings only.
set_property BITSTREAM.GENERAL.COMPRESS TRUE [current_design]
"""


BUILD_SH = """\
#!/bin/sh
# Builds hwflow.bit and hwflow.xsa in this folder (needs Vivado on PATH).
set -e
cd "$(dirname "$0")"
exec vivado -mode batch -nojournal -log build.log -source create_project.tcl
"""


def _vivado_readme(cfg: AccelConfig, board) -> str:
    ps = "Versal CIPS + AXI NoC" if board.family.startswith("versal") \
        else "Zynq UltraScale+ MPSoC"
    return f"""\
# hwflow Vivado project for {board.name}

The accelerator of this build behind AXI ({board.part}, {board.clock_mhz:g} MHz), in a block
design with the {ps}: the PS writes the control registers over AXI4-Lite, the kernel's
AXI4 master(s) ({8 * cfg.port_bytes}-bit) read and write DDR, its interrupt goes to the PS.

Build (needs Vivado on PATH; `JOBS=n` sets the parallel runs):

    sh <this folder>/build.sh        # -> hwflow.bit, hwflow.xsa

| file | what |
|---|---|
| `src/{KERNEL_NAME}.v` | generated Verilog: kernel top + accelerator + AXI4 master(s) |
| `create_project.tcl` | project, block design, synthesis, implementation, bitstream |
| `constraints/hwflow.xdc` | bitstream settings (no pins: clock and reset come from the PS) |
| `build.sh` | the build |

The control registers sit at the address Vivado assigns in the PS's data space (0xA000_0000 on
Zynq UltraScale+). The host writes `MEM<j>` with the physical address of a buffer per port.
{_striping_note(cfg)}

{_register_table(cfg)}
"""


def write_vivado_project(d: Path, cfg: AccelConfig, board, verilog: str) -> None:
    """Write the Vivado block-design project into folder ``d``."""
    tcl = _create_project_tcl(cfg, board)
    (d / "src").mkdir(parents=True)
    (d / "constraints").mkdir()
    (d / "src" / f"{KERNEL_NAME}.v").write_text(verilog)
    (d / "create_project.tcl").write_text(tcl)
    (d / "constraints" / "hwflow.xdc").write_text(_xdc(board))
    (d / "build.sh").write_text(BUILD_SH)
    (d / "build.sh").chmod(0o755)
    (d / "README.md").write_text(_vivado_readme(cfg, board))


# --- driver ----------------------------------------------------------------------------------

def _fit(out: Path, board) -> list[str]:
    """Resource estimate of the accelerator; writes reports/utilization.json, raises when it
    does not fit. Returns a summary line."""
    from . import fit

    rtl = out / "rtl" / f"{ACCEL_TOP}.v"
    if not rtl.is_file():
        raise HwflowError(f"'{rtl}' is missing; rebuild the folder with `hwflow compile`")
    util = fit.xilinx_utilization(rtl.read_text(), ACCEL_TOP, board)
    write_json(out / "reports" / "utilization.json", util)
    fit.check_fit(util, board)
    parts = [f"{k.upper()} {v['used']:,}/{v['available']:,}" for k, v in util.items()
             if isinstance(v, dict) and "used" in v and "available" in v]
    return [f"{board.name}: resource estimate fits ({', '.join(parts)})"] if parts else []


def export_xilinx(out, board, cfg: AccelConfig, require_bitstream: bool = False) -> dict:
    """Fit check, then the vendor project for ``board`` in build folder ``out``; runs the build
    when the vendor tools are on PATH.

    Returns
    -------
    dict
        ``summary`` (lines to print), ``exit_code`` (0; 3 when ``require_bitstream`` and a tool
        is missing; 1 when the vendor build failed), ``project`` (the folder), ``bitstream``
        (the built file, or None).
    """
    out = Path(out)
    if board.flow not in ("vitis", "vivado"):
        raise HwflowError(f"board '{board.name}' uses the {board.flow} flow, not a Xilinx one")
    summary = _fit(out, board)
    verilog = kernel_verilog(cfg, int(round(board.clock_mhz * 1e6)))
    if board.flow == "vitis":
        folder, tools, product = out / "vitis", ("vivado", "v++"), "hwflow.xclbin"
        command = ["make", "-C", str(folder)]
        writer = write_vitis_project
    else:
        folder, tools, product = out / "vivado", ("vivado",), "hwflow.bit"
        command = ["sh", str(folder / "build.sh")]
        writer = write_vivado_project
    with atomic_dir(folder) as d:
        writer(d, cfg, board, verilog)
    shown = " ".join(command)
    result = {"project": str(folder), "bitstream": None, "exit_code": 0}

    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        line = (f"{board.name}: project written to {folder}; {' and '.join(missing)} not found: "
                f"run `{shown}` where {'Vitis' if board.flow == 'vitis' else 'Vivado'} is "
                "installed")
        result["summary"] = summary + [line]
        result["exit_code"] = EXIT_NO_TOOL if require_bitstream else 0
        return result

    log = folder / "build.log" if board.flow == "vitis" else folder / "build.stdout.log"
    with open(log, "w") as f:
        r = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT)
    if r.returncode != 0 or not (folder / product).is_file():
        result["summary"] = summary + [f"{board.name}: `{shown}` failed (exit {r.returncode}); "
                                       f"see {log}"]
        result["exit_code"] = 1
        return result
    result["bitstream"] = str(folder / product)
    result["summary"] = summary + [f"{board.name}: built {folder / product}"]
    return result
