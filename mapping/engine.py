"""Choose the accelerator configuration for a board and check that it fits.

The resource model here is deliberately simple and explicit (issue 7 fits it on Yosys runs):
- DSP48E2: one per MAC slot (P*L) plus the epilogue's multipliers: (acc+bias)*mult is a 32x16
  product (2 slices: 27x18 covers 27 bits of one operand) and res*res_mult an 8x16 one (1 slice).
- BRAM36: the activation buffer has two read ports (engine and epilogue/DMA), so it is stored
  twice; the weight ring once. A 36 Kb block holds 4608 bytes at its 72-bit width.
"""

from __future__ import annotations

from hwflow.boards import Board
from hwflow.hw.config import AccelConfig

from .errors import MappingError

EPILOGUE_DSP = 3
BRAM36_BYTES = 4608


def choose_config(board: Board, **overrides) -> AccelConfig:
    """The board's default engine (``engine:`` in its YAML) with optional overrides.

    The number of memory ports defaults to what one weight row per cycle needs
    (``chains * chain_len / port_bytes``), capped by the board's channels.
    """
    eng = dict(board.engine)
    eng.update({k: v for k, v in overrides.items() if v is not None})
    chains = eng.get("chains", 8)
    chain_len = eng.get("chain_len", 16)
    port_bytes = int(board.memory["port_bytes"])
    want_ports = max(1, chains * chain_len // port_bytes)
    ports = eng.get("mem_ports", min(want_ports, int(board.memory["channels"])))
    if ports > board.memory["channels"]:
        raise MappingError(f"board {board.name}: {ports} memory ports requested, it has "
                           f"{board.memory['channels']} channels")
    try:
        return AccelConfig(chains=chains, chain_len=chain_len, mem_ports=ports,
                           port_bytes=port_bytes, act_depth=eng.get("act_depth", 2048),
                           weight_depth=eng.get("weight_depth", 256))
    except ValueError as e:
        raise MappingError(f"board {board.name}: invalid engine configuration: {e}") from None


def estimate_resources(cfg: AccelConfig) -> dict:
    """Analytic resource estimate: ``{kind: used}`` for dsp and bram (see module docstring)."""
    act_bytes = cfg.act_depth * cfg.chain_len
    ring_bytes = cfg.weight_depth * cfg.row_bytes
    bram = 2 * -(-act_bytes // BRAM36_BYTES) + -(-ring_bytes // BRAM36_BYTES)
    return {"dsp": cfg.dsp_slices + EPILOGUE_DSP, "bram": bram}


def check_fit(cfg: AccelConfig, board: Board) -> dict:
    """Compare the estimate with the board; raise :class:`MappingError` with the numbers if not."""
    used = estimate_resources(cfg)
    report = {k: {"used": v, "available": board.resources[k]} for k, v in used.items()}
    over = [f"{k.upper()} {r['used']} > {r['available']}" for k, r in report.items()
            if r["used"] > r["available"]]
    if over:
        raise MappingError(f"design does not fit {board.name}: " + ", ".join(over)
                           + " (needed > available); use a smaller engine")
    return report
