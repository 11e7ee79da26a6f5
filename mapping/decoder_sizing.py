"""The engine for a decoder: the configuration a board's engine becomes so that a decoder
runs on it (the weight ring, activation buffer, TLMM accumulator and ring placement it needs,
the TLMM engine for ternary linears, the memory ports its image and bandwidth need), and the
lowering from shapes alone the predictions are made from.

One rule for the compile from weights (``hwflow.llm_flow``'s ``size`` step) and the shape-only
compile (``lower_shape``): a board's engine that cannot hold the model is enlarged, with one
note per change, and the fit check then decides whether the board can hold that.
"""

from __future__ import annotations

from dataclasses import replace

from hwflow.compiler.decoder import DecoderShape
from hwflow.compiler.llm_config import ConfigShape, shape_decoder, shape_mamba
from hwflow.compiler.ssm import SsmShape
from hwflow.compiler.ssm_quant import QMamba
from hwflow.hw.isa import Opcode, field_max

from .accel_config import (
    check_fit,
    check_fit_tlmm,
    default_attn_heads,
    place_memories,
    tlmm_config,
)
from .errors import MappingError
from .llm_lower import (
    MIN_BUCKET,
    SSM_EXACT,
    act_row_words,
    lower_decoder,
    ssm_units,
    tlmm_outputs,
)
from .weight_format import DENSE_INT8, ring_reserve

__all__ = ["size_buffers", "tlmm_engine", "lower_shape", "scan_lanes", "ACT_ADDR_WORDS"]

#: Activation words an instruction can address: its 16-bit activation fields.
ACT_ADDR_WORDS = field_max(Opcode.MATMUL, "a") + 1


def _structure(shape: DecoderShape, family: str | None, ternary: bool) -> ConfigShape:
    """The block structure of ``family`` (default: BitNet's for ternary, LLaMA's otherwise;
    Qwen3's head norms)."""
    family = family or ("bitnet" if ternary else "llama")
    bitnet = family == "bitnet"
    return ConfigShape(shape, family, "relu2" if bitnet else "silu", bitnet, bitnet, 0, "",
                       head_norms=family == "qwen3")


def _size_act_depth(qd, cfg, board) -> tuple:
    """``cfg`` with an activation buffer that holds the decoder, and why it changed (or None).

    The programs keep every activation of ``B`` rows on chip (``B * words_per_row`` act
    words, plus the one logits row: a 32000-token vocabulary's is 2000 words at L = 16). When the
    configured ``act_depth`` cannot hold one row, it is raised to the smallest power of two
    that holds :data:`MIN_BUCKET` rows (prefill in 8-row buckets), or the rows a multi-row TLMM
    engine fetches its weights once for (``tlmm_rows * tlmm_passes``) where more, if that still
    fits the board with its memories placed (:func:`~.accel_config.place_memories`), else half
    as many rows, and at least one row (prefill token by token): BitNet 0.7B on the KV260 gets
    16-row buckets in 32768 words, its activation buffer in 48 URAM288."""
    words, fixed = act_row_words(qd, cfg)
    if cfg.act_depth >= words + fixed:
        return cfg, None

    def pow2(n):
        return 1 << (int(n) - 1).bit_length()

    chosen = None
    # a TLMM engine that fetches the weights once for S*R rows wants buckets of that many
    most = max(MIN_BUCKET, cfg.tlmm_rows * cfg.tlmm_passes if cfg.tlmm else 1)
    for rows in [1 << k for k in reversed(range(most.bit_length()))]:    # 8 (16), .., 2, 1
        cand = replace(cfg, act_depth=pow2(rows * words + fixed))
        if cand.act_depth > ACT_ADDR_WORDS:
            continue
        chosen = cand
        try:
            check_fit(place_memories(cand, board)[0], board)    # with URAM where it would go
            break
        except MappingError:
            continue
    if chosen is None:
        raise MappingError(f"one activation row of this decoder needs {words + fixed} words at "
                          f"L = {cfg.chain_len}, more than the {ACT_ADDR_WORDS} the ISA's 16-bit "
                          "activation addresses reach; use a wider chain_len")
    rows = (chosen.act_depth - fixed) // words
    why = (f"act_depth {cfg.act_depth} cannot hold one activation row of {words + fixed} "
           f"words; raised to {chosen.act_depth} (prefill buckets of up to {rows} "
           f"row{'s' if rows > 1 else ''})")
    return chosen, why


def size_buffers(qd, cfg, board, ternary: bool = False) -> tuple[object, list[str]]:
    """``(cfg, notes)``: the weight ring, the activation buffer and the TLMM accumulator sized
    for decoder ``qd`` (:func:`_size_weight_depth`, :func:`_size_act_depth`,
    :func:`_size_tlmm_acc`) and the ring, the TLMM's memories or the activation buffer placed
    in URAM where block RAM is short (``mapping.accel_config.place_memories``), with one
    ``note`` per change. The
    one rule of the compile from weights and the shape-only compile: a board's engine that
    cannot hold the model is enlarged, and the fit check then decides whether the board can
    hold that."""
    notes = []
    for step in (lambda c: _size_ssm(qd, c), lambda c: _size_weight_depth(qd, c, ternary),
                 lambda c: _size_act_depth(qd, c, board), lambda c: _size_tlmm_acc(qd, c)):
        cfg, why = step(cfg)
        notes += [why] if why else []
    cfg, placed = place_memories(cfg, board)
    return cfg, notes + placed


def scan_lanes(chain_len: int, d_inner: int | None = None) -> int:
    """W of the scan units (``AccelConfig.ssm_lanes``) for an engine of ``chain_len`` lanes:
    ``L / 4`` (4 at L = 16), so a SCAN beat of ``L`` channels takes ``L / W + 1 = 5`` cycles
    (Mamba-2.8B's 64 scans a token: 102 k cycles at W = 4 against 348 k at W = 1, where its
    int4 weights take 1.1 M at the U280's rate), halved until it divides ``d_inner`` and leaves
    every unit ``hw.ssm.HAZARD`` channels of a layer."""
    from hwflow.hw.ssm import HAZARD

    w = max(1, chain_len // 4)
    while w > 1 and d_inner is not None and (d_inner % w or d_inner // w < HAZARD):
        w //= 2
    return w


def _size_ssm(qd, cfg) -> tuple:
    """``cfg`` with the state-space units a Mamba needs (``mapping.llm_lower.ssm_units``: its
    states, taps and every layer's state on chip; the Hadamard unit's largest block at least
    ``chain_len``, its smallest; :func:`scan_lanes` scan units) and one attention lane, and
    why it changed (or None; a decoder: unchanged)."""
    if not isinstance(qd, QMamba):
        return cfg, None
    need = ssm_units(qd, cfg.chain_len)
    need["hadamard_block"] = max(need["hadamard_block"], cfg.chain_len)
    need["ssm_lanes"] = scan_lanes(cfg.chain_len, qd.shape.d_inner)
    units = {k: v if k in SSM_EXACT + ("ssm_lanes",) else max(v, getattr(cfg, k))
             for k, v in need.items()}
    # no attention runs: one lane keeps GATHER and the vector unit's path (the U280's other 15
    # lanes would hold 795 DSP48E2 idle)
    units["attn_heads"] = 1
    if all(getattr(cfg, k) == v for k, v in units.items()):
        return cfg, None
    s = qd.shape
    state_kb = units["ssm_channels"] * units["ssm_states"] * 4 / 1024
    hist_kb = units["conv_words"] * (units["conv_taps"] - 1) * cfg.chain_len / 1024
    return replace(cfg, **units), (
        f"state-space units sized for the model: {s.d_state} states, {s.d_conv} taps, "
        f"{units['ssm_channels']} scan channels ({s.layers} layers x {s.d_inner}: the int32 "
        f"state, {state_kb:,.1f} KiB on chip), {units['conv_words']} conv words (history "
        f"{hist_kb:,.1f} KiB), Hadamard blocks to {units['hadamard_block']}, "
        f"{units['ssm_lanes']} scan unit{'s' if units['ssm_lanes'] > 1 else ''} side by side; "
        "one attention lane (no attention runs)")


def _size_weight_depth(qd, cfg, ternary: bool) -> tuple:
    """``cfg`` with a weight ring that holds two tiles of the widest int8 linear, and why it
    changed (or None): ``2 * ring_reserve`` of the largest ``k_words`` (``down``'s
    ``ceil(intermediate / L)``, ``o``'s padded heads, the residual row), raised to a power of
    two (LLaMA-2-7B's down, K = 11008, needs 1380 entries at L = 16: 2048)."""
    s, L, SB = qd.shape, cfg.chain_len, cfg.beat_bytes
    ew = -(-s.hidden // SB) * SB // L
    if isinstance(qd, QMamba):      # in- (hidden), x and out (d_inner), dt (dt_rank) projections
        widths = [ew, -(-s.d_inner // L), -(-s.dt_rank // L)]
    elif ternary:
        widths = [ew]
    else:
        widths = [ew, s.heads * -(-s.head_dim // L), -(-s.intermediate // L)]
    need = 2 * max(ring_reserve(cfg, DENSE_INT8, k) for k in widths)
    if cfg.weight_depth >= need:
        return cfg, None
    depth = 1 << (need - 1).bit_length()
    return replace(cfg, weight_depth=depth), (
        f"weight_depth {cfg.weight_depth} cannot hold two tiles of the widest linear ({need} "
        f"entries); raised to {depth}")


def _size_tlmm_acc(qd, cfg) -> tuple:
    """``cfg`` with a TLMM accumulator deep enough for the widest ternary linear's outputs
    (``mapping.llm_lower.tlmm_outputs``; BitNet b1.58 2B4T's gate/up: 6912), and why it
    changed (or None)."""
    widest = tlmm_outputs(qd, cfg.chain_len)
    if not cfg.tlmm or widest <= cfg.tlmm_acc_depth:
        return cfg, None
    return replace(cfg, tlmm_acc_depth=widest), (
        f"tlmm_acc_depth {cfg.tlmm_acc_depth} cannot hold the {widest} outputs of the widest "
        f"ternary linear; raised to {widest}")


def tlmm_engine(qd, cfg, board) -> tuple:
    """``(cfg, sizing)``: the configuration with the TLMM engine for a decoder with ternary
    linears (``T``, ``Q`` from the board YAML or sized by :func:`engine.size_tlmm`, the
    accumulator at least as deep as the widest ternary linear's outputs) and the sizing report;
    the one rule of the compile from weights and the shape-only compile.

    Raises
    ------
    MappingError
        The board is built without the engine (``engine: tlmm: false``), or no engine fits it.
    """
    widest = tlmm_outputs(qd, cfg.chain_len)
    if board.engine.get("tlmm", True) is False:
        raise MappingError(f"board {board.name} is built without the ternary table-lookup "
                           "engine (`engine: tlmm: false` in its YAML) and this decoder has "
                           "ternary linears; compile with --weights int8 or for a board with "
                           "one (kv260, u280)")
    return tlmm_config(board, cfg, acc_depth=widest)      # at least the board's depth


def _port_width(board, ports: int, port_bytes: int) -> int:
    """The port width for ``ports`` ports: ``port_bytes`` doubled, up to the board's
    ``memory.max_port_bytes``, while the channel behind a port delivers more than the port
    carries (the U280: 44 B per cycle of HBM pseudo-channel at 300 MHz fills 64-byte ports to
    69%, 32-byte ones to 100%: 512-bit kernel ports bring 1.38x the bytes per cycle). A row
    padded to the wider super-beat costs no weight bytes: a MATMUL skips the padding
    (``x_pad``)."""
    while port_bytes < board.max_port_bytes and \
            board.port_rate_bytes(ports, 2 * port_bytes) > port_bytes:
        port_bytes *= 2
    return port_bytes


def _widen(cfg, board, ports: int, int4: bool, heads: int):
    """``cfg`` on ``ports`` memory ports as wide as their channels can fill
    (:func:`_port_width`): chains a multiple of what keeps a weight row whole
    super-beats (twice the super-beat for int4: a memory row of two k-groups fills two ring
    entries in the two cycles it arrives in, the port's rate), attention lanes following the
    super-beat up to the model's ``heads`` query heads (a lane past them never runs)."""
    width = _port_width(board, ports, cfg.port_bytes)
    sb = ports * width
    unit = (2 if int4 else 1) * -(-sb // cfg.chain_len)
    chains = -(-max(cfg.chains, unit) // unit) * unit
    grown = (cfg.attn_heads * sb // cfg.beat_bytes if "attn_heads" in board.engine
             else default_attn_heads(sb, cfg.chain_len))
    attn = max(cfg.attn_heads, min(grown, heads))
    return replace(cfg, mem_ports=ports, port_bytes=width, chains=chains, attn_heads=attn)


def _fits(qd, cfg, board, ternary: bool) -> bool:
    """Whether ``cfg``, with the buffers and ring placement the model needs, fits the board."""
    try:
        sized, _ = size_buffers(qd, cfg, board, ternary)
        (check_fit_tlmm if sized.tlmm else check_fit)(sized, board)
        return True
    except MappingError:
        return False


def _size_ports(image_bytes: int, cfg, board, qd, ternary: bool = False,
                int4: bool = False, widen: bool = True) -> tuple:
    """``(cfg, why)``: the memory ports and the engine behind them for a decoder's image.

    Decode is bound by the memory, and its bandwidth comes with the ports: every port is
    wired to a channel (which holds the port's stripe of the image), so the engine gets
    every port the board has (``memory.ports``) when that engine fits the board, else the most
    that fit (halving), and never fewer than the image needs port by port (an engine that does
    not fit then is reported as such). Chains and attention lanes follow (:func:`_widen`);
    int4 weights get twice the super-beat of chains where the ports stay, if that fits.
    Without ``widen`` (a sweep point's engine, kept as the point chose it) only what the image
    needs is raised."""
    most = board.max_mem_ports
    need = next((p for p in range(1, most + 1)                # ports that hold the image
                 if image_bytes <= p * board.port_capacity_bytes(p)), most)
    per_channel = board.port_capacity_bytes(cfg.mem_ports)
    cands, p = [], most
    while p > cfg.mem_ports:
        cands.append(p)
        p //= 2
    # the fewest ports, from the board's channels halving, whose channels hold the image
    target = min((c for c in cands if c >= need), default=cands[0]) if cands else None
    cands.append(cfg.mem_ports)
    for ports in cands:
        forced = need > cfg.mem_ports and ports == target
        cand = _widen(cfg, board, ports, int4, qd.shape.heads)
        if cand == cfg:
            return cfg, None
        if not (forced or widen and _fits(qd, cand, board, ternary)):
            continue
        wide = (f"{ports} ports of {cand.port_bytes} B (their channels deliver "
                f"{board.port_rate_bytes(ports, cand.port_bytes)} B a cycle)"
                if cand.port_bytes != cfg.port_bytes else f"{ports} ports")
        gain = (ports * board.port_rate_bytes(ports, cand.port_bytes)
                / (cfg.mem_ports * board.port_rate_bytes(cfg.mem_ports, cfg.port_bytes)))
        if ports == cfg.mem_ports and cand.port_bytes == cfg.port_bytes:
            why = f"int4 weights: chains to {cand.chains} (the weight fill at the port rate)"
        else:
            per_port = image_bytes / 1e6 / cfg.mem_ports
            reason = (f"the {image_bytes / 1e9:.2f} GB image is {per_port:,.0f} MB per port, "
                      f"a port's share of its channel holds {per_channel / 1e6:,.0f} MB"
                      if need > cfg.mem_ports else
                      f"decode is memory-bound: {wide} bring {gain:.3g}x the bandwidth and "
                      "the engine for them fits the board")
            why = (f"mem_ports {cfg.mem_ports}: {reason}; raised to {wide}, a "
                   f"{cand.beat_bytes} B super-beat, chains to {cand.chains}, attention "
                   f"lanes to {cand.attn_heads}")
        return cand, why
    return cfg, None


def lower_shape(shape, cfg, board, *, ternary=False, max_context=2048, family=None,
                adjust=True, weights=None, widen=True, lm_head=None):
    """The shape-only lowering the predictions are made from: ``(lowered, cfg, notes)`` with
    ``cfg`` as adjusted (TLMM engine for ternary; with ``adjust``, the weight ring, the
    activation buffer and the address width sized for the model) and ``notes`` the reasons.
    Without ``adjust`` a configuration too small for the model is an error. ``weights``
    (``int8``, ``int4``, ``mixed``, ``ternary``; ``compiler.llm_config.shape_decoder``)
    overrides ``ternary``; ``lm_head`` (``int8``, ``int4``) sets the LM head's apart from it.
    With ``adjust`` and ``widen`` the engine also takes every memory
    channel it fits with (:func:`_size_ports`); a sweep passes ``widen=False`` to keep its
    points' engines."""
    weights = weights or ("ternary" if ternary else "int8")
    ternary = weights == "ternary"
    if isinstance(shape, SsmShape):     # a Mamba: no context to size, its units instead
        qd = shape_mamba(shape, weights)
    else:
        cs = _structure(shape, family, ternary)
        max_context = min(int(max_context), shape.max_position)
        qd = shape_decoder(cs, max_context, weights, lm_head=lm_head)
    notes = []
    if ternary and not cfg.tlmm:
        cfg = tlmm_engine(qd, cfg, board)[0]
        notes.append(f"TLMM engine added (G={cfg.tlmm_g} T={cfg.tlmm_t} Q={cfg.tlmm_q})")
    elif not ternary and cfg.tlmm and adjust:
        cfg = replace(cfg, tlmm=False)
        notes.append("TLMM engine left out: no ternary linear runs on it")
    if cfg.sparse and adjust:
        # 40% of the engine's LUTs at LLaMA-2-7B's 256 chains: 1.22 M with them, 0.73 M
        # without (the fitted model's PL_sparse)
        cfg = replace(cfg, sparse=False)
        notes.append("N:M selectors left out: a decoder's linears are dense")
    base = cfg
    if adjust:
        cfg, why = size_buffers(qd, cfg, board, ternary)
        notes += why
    try:
        # lowered with the widest address the ISA has (32-bit ext fields), then the ports'
        # address width set to what the image needs: nothing in the programs depends on it
        lw = lower_decoder(qd, replace(cfg, addr_bits=32) if adjust else cfg,
                           shape_only=True)
    except MappingError as e:
        raise MappingError(f"cannot map this decoder on the configuration: {e}") from None
    if adjust:
        # widened from the sized buffers, the ring placement decided again for the new engine
        unplaced = replace(cfg, ring_uram=base.ring_uram)
        wider, why = _size_ports(lw.memory_map.total_bytes, unplaced, board, qd, ternary,
                                 int4=weights in ("int4", "mixed") or lm_head == "int4",
                                 widen=widen)
        if why:
            notes.append(why)
            cfg, whys = size_buffers(qd, wider, board, ternary)
            notes += whys
            try:
                lw = lower_decoder(qd, replace(cfg, addr_bits=32), shape_only=True)
            except MappingError as e:
                raise MappingError(f"cannot map this decoder on the configuration: {e}") \
                    from None
    need = max(1, -(-lw.memory_map.total_bytes // cfg.beat_bytes) - 1).bit_length()
    if need > cfg.addr_bits:
        gib = lw.memory_map.total_bytes / 2**30
        notes.append(f"addr_bits {cfg.addr_bits} cannot address the {gib:.2f} GiB image; "
                     f"raised to {need}")
        cfg = replace(cfg, addr_bits=need)
    lw.cfg = cfg
    return lw, cfg, notes
