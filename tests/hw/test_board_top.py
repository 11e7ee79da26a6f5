"""The open-board top's parts: the ECP5 PLL settings and the start FSM against the register file.
The whole top is built into bitstreams by tests/hwflow/export/test_open_flow.py."""

import pytest
from amaranth import Module
from amaranth.lib import wiring
from amaranth.sim import Simulator

from hwflow.hw.axi_lite import ControlRegisters
from hwflow.hw.board_top import START_DELAY, StartFSM, ecp5_pll_params


def test_ecp5_pll_25_to_100():
    p = ecp5_pll_params(25, 100)
    assert p["f_out"] == 100 and 400 <= p["f_out"] * p["outdiv"] <= 800


def test_ecp5_pll_without_a_setting_is_refused():
    # 2 MHz in is below the 3.125 MHz phase detector minimum for every divider
    with pytest.raises(ValueError, match="no ECP5 PLL setting makes 100 MHz from 2 MHz"):
        ecp5_pll_params(2, 100)


@pytest.mark.parametrize("error", [0, 2])
def test_start_fsm_starts_one_run_and_reports_it(error):
    """After START_DELAY cycles the FSM writes PROG_BASE and ap_start once; when the run ends
    (ap_done, irq) it reads ERROR and shows done and error != 0."""
    m = Module()
    m.submodules.fsm = fsm = StartFSM(prog_base=0x123)
    m.submodules.regs = regs = ControlRegisters()
    wiring.connect(m, fsm.ctrl, regs.ctrl)
    m.d.comb += fsm.irq.eq(regs.irq)
    seen = {}

    async def tb(ctx):
        starts = []
        for cycle in range(START_DELAY + 100):
            if ctx.get(regs.start):
                starts.append(cycle)
            await ctx.tick()
        assert len(starts) == 1 and starts[0] > START_DELAY, starts
        assert ctx.get(regs.prog_base) == 0x123
        assert not ctx.get(fsm.done)
        ctx.set(regs.error, error)
        ctx.set(regs.done, 1)
        await ctx.tick()
        ctx.set(regs.done, 0)
        for _ in range(20):
            await ctx.tick()
        seen.update(done=ctx.get(fsm.done), error=ctx.get(fsm.error),
                    starts=ctx.get(regs.start))

    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    assert seen == {"done": 1, "error": int(error != 0), "starts": 0}
