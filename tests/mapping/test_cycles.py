"""mapping.cycles: the structure of the MATMUL terms (compute, weight fetch, epilogue), the
terms of every other instruction, instruction fetch, and stored calibrations."""

import json
from dataclasses import replace

import numpy as np
import pytest

from hwflow.hw.config import AccelConfig
from hwflow.hw.isa import (
    FLAG_GAMMA,
    FLAG_GELU,
    FLAG_INT4,
    FLAG_POS,
    FLAG_RELU2,
    FLAG_TANH,
    Instr,
    Opcode,
)
from hwflow.hw.sequencer import epilogue_lanes
from hwflow.mapping import cycles
from hwflow.mapping.weight_format import LayerFormat, tile_mem_rows
from hwflow.sim.isa_model import IsaModel

CFG = AccelConfig()                                     # P = L = 16, R = 2, one beat per row


def _mm(fmt: LayerFormat, rows: int, K: int, N: int) -> Instr:
    kw = -(-K // CFG.chain_len)
    return Instr(Opcode.MATMUL, FLAG_INT4 if fmt.int4 else 0, ext=0, rows=rows, k_words=kw,
                 n_tiles=-(-N // (CFG.chains * fmt.r)), n=N, words=-(-N // CFG.chain_len),
                 tile_mem_rows=tile_mem_rows(CFG, fmt, kw), lgm=fmt.lgm, lgr=fmt.lgr)


def test_compute_counts_row_pairs_and_shrinks_by_r():
    dense = _mm(LayerFormat(), 16, 1024, 1024)
    assert cycles.matmul_compute(dense) == 64 * 8 * 64
    assert cycles.matmul_compute(_mm(LayerFormat(), 15, 1024, 1024)) == 64 * 8 * 64
    assert cycles.matmul_compute(_mm(LayerFormat(1, 4), 16, 1024, 1024)) == 16 * 8 * 64
    assert cycles.matmul_compute(_mm(LayerFormat(2, 4), 16, 1024, 1024)) == 32 * 8 * 64


def test_fetch_is_memory_rows_or_ring_entries():
    # int8 2:4: 2 + 64 + 32 memory rows (one beat each) beat R + k_words = 66 entries
    i = _mm(LayerFormat(2, 4), 1, 1024, 1024)
    assert cycles.matmul_fetch(i, CFG) == i.n_tiles * 98
    # int4 dense: 2 + 32 + 1 rows, but the fill decoder writes 66 entries (value rows x 2)
    i = _mm(LayerFormat(1, 1, 4), 1, 1024, 1024)
    assert cycles.matmul_fetch(i, CFG) == i.n_tiles * 66


def test_a_slower_memory_stretches_the_read_streams_only():
    """Where a port's channel delivers ``rate`` < 1 beats per cycle (``CycleFit.rate_bytes``,
    the simulated memory's RATE_BYTES), memory beats take 1/rate cycles; ring entries,
    compute, writes and a full-rate memory are unchanged."""
    fit = cycles.with_rate(cycles.BUILTIN, CFG, 16)
    assert fit.beat_rate(CFG) == 0.5
    assert cycles.with_rate(cycles.BUILTIN, CFG, 32).rate_bytes is None       # the port's own
    i = _mm(LayerFormat(2, 4), 1, 1024, 1024)                       # 98 beats vs 66 entries
    assert cycles.matmul_fetch(i, CFG, 0.5) == i.n_tiles * 196
    i = _mm(LayerFormat(1, 1, 4), 1, 1024, 1024)                    # 35 beats vs 66 entries
    assert cycles.matmul_fetch(i, CFG, 0.5) == i.n_tiles * 70
    assert cycles.matmul_fetch(i, CFG, 0.75) == cycles.matmul_fetch(i, CFG) == i.n_tiles * 66
    # 64 words of 16 B = 4 super-beats of 256 B: a word a cycle, unless a beat takes 32
    load = Instr(Opcode.LOAD, 0, ext=0, a=0, b=64)
    store = Instr(Opcode.STORE, 0, ext=0, a=0, b=64)
    assert cycles.features(load, CFG, rate=1 / 8)[1]["move"] == 64
    assert cycles.features(load, CFG, rate=1 / 32)[1]["move"] == 128
    assert cycles.features(store, CFG, rate=1 / 32)[1]["move"] == 64
    slow = cycles.instr_cycles(_mm(LayerFormat(), 1, 4096, 4096), CFG, fit=fit)
    full = cycles.instr_cycles(_mm(LayerFormat(), 1, 4096, 4096), CFG, fit=cycles.BUILTIN)
    # a GEMV is fetch-bound: its 256 tiles of 258 beats take twice as long, its fixed
    # costs (the last epilogue, the read latency) do not
    assert 1.8 < slow / full < 2.0
    assert slow - full > 0.95 * 256 * 258


def test_epilogue_covers_the_tile_channels():
    # 1:4: C = 64 channels a tile, 4 rows (2 pairs), E = 4 epilogues, R = 2 parameter rows
    assert epilogue_lanes(CFG) == 4 and CFG.param_rows == 2
    i = _mm(LayerFormat(1, 4), 4, 64, 128)
    assert cycles.matmul_epilogue(i, CFG) == 2 * (4 * 64 // 4 + 2 + 2)
    # N = 100 in 2 tiles of 64: no bytes past the last tile (words·L = 112 < 128)
    i = _mm(LayerFormat(1, 4), 1, 64, 100)
    assert cycles.matmul_epilogue(i, CFG) == 2 * (64 // 4 + 1 + 2)


def test_gemv_is_fetch_bound_and_sparse_is_faster():
    # the model's structure (built-in values): int4 fills as many ring entries as int8 (the
    # stored u280 calibration, which CFG's engine shape selects, adds the fraction of a cycle
    # per int4 tile the RTL measures)
    dense = cycles.instr_cycles(_mm(LayerFormat(), 1, 1024, 1024), CFG, fit=False)
    sparse = cycles.instr_cycles(_mm(LayerFormat(1, 4), 1, 1024, 1024), CFG, fit=False)
    int4 = cycles.instr_cycles(_mm(LayerFormat(1, 1, 4), 1, 1024, 1024), CFG, fit=False)
    assert sparse < dense and int4 <= dense
    total = cycles.predict([_mm(LayerFormat(), 1, 1024, 1024), Instr(Opcode.END)], CFG,
                           fit=False)
    assert total["total"] > dense


def test_a_prefetched_matmul_starts_with_its_fetch_ahead():
    """After its PREFETCH, a fetch-bound MATMUL (half CFG's ports: two beats a row) is
    shorter by what its ring fetched before it: during a vector instruction (no reads) up to
    the ring's room (256 rows of 2 beats), during a LOAD less, which also waits behind the
    ring's bursts; never shorter than its compute."""
    cfg = replace(CFG, mem_ports=CFG.mem_ports // 2)
    kw = 64
    mm = Instr(Opcode.MATMUL, ext=0, rows=1, k_words=kw, n_tiles=64, n=1024, words=64,
               tile_mem_rows=tile_mem_rows(cfg, LayerFormat(), kw))
    pf = replace(mm, op=Opcode.PREFETCH)
    vec = Instr(Opcode.RMSNORM, rows=1, n=1024, words=64)
    load = Instr(Opcode.LOAD, ext=0, a=0, b=256)
    end = Instr(Opcode.END)
    plain = cycles.predict([vec, mm, end], cfg, fit=False)["per_instruction"]
    pre = cycles.predict([pf, vec, mm, end], cfg, fit=False)["per_instruction"]
    assert pre[1] == plain[0] > 2 * 256 * cfg.beats_per_row
    saved = plain[1] - pre[2]
    assert 256 * cfg.beats_per_row // 2 < saved <= 256 * cfg.beats_per_row
    assert pre[2] > cycles.matmul_compute(mm)
    loaded = cycles.predict([pf, load, mm, end], cfg, fit=False)["per_instruction"]
    assert loaded[1] > cycles.instr_cycles(load, cfg, fit=False)
    assert pre[2] < loaded[2] < plain[1]


# ------------------------------------------------------------------------- TMATMUL

def _tlmm_cfg(T: int, Q: int, port_bytes: int, mem_ports: int) -> AccelConfig:
    return AccelConfig(chains=max(8, mem_ports * port_bytes // 16), chain_len=16,
                       mem_ports=mem_ports, port_bytes=port_bytes,
                       tlmm=True, tlmm_g=3, tlmm_t=T, tlmm_q=Q, tlmm_acc_depth=1024)


def _tmm(rows: int, K: int, N: int) -> Instr:
    return Instr(Opcode.TMATMUL, rows=rows, k_groups=-(-K // 3), n_out=N,
                 words=-(-N // 16))


def test_tmatmul_records_and_row_formula():
    """KV260's engine (G = 3, T = Q = 8, SB = 16 B): 320-bit records take 3 beats, so a chunk
    streams 3 * blocks - 2 cycles; 27 table entries are built per chunk (24 + 27 + 2 = 53
    cycles), hidden under the previous chunk's 3 * 256 beats but for the first."""
    cfg = _tlmm_cfg(8, 8, 16, 1)
    i = _tmm(1, 2048, 2048)                       # 683 groups: 86 chunks, 256 blocks
    assert cycles.tmatmul_records(i, cfg) == 86 * 256
    # the epilogue: E = 2 outputs per cycle (SB/8 = 2 parameter records per entry)
    row = cycles.TLMM_ROW_FIXED + (53 + 1 + (3 * 256 - 2)) + 85 * (3 * 256) + 128 * 16 // 2
    # setup: T, Q, SB/8 = 2 powers of two (1), multiplier bits(128) + 1 = 9, KR = 1 (1)
    assert cycles.tmatmul_cycles(i, cfg) == (cycles.TLMM_SETUP + 1 + 9 + 1 + 1024
                                             + cycles.READ_LATENCY + row)
    two = _tmm(2, 2048, 2048)
    assert cycles.tmatmul_cycles(two, cfg) - cycles.tmatmul_cycles(i, cfg) == row


def test_tmatmul_records_per_beat_stream_one_per_cycle():
    """U280's engine (T = 16, Q = 8, SB = 256 B): 3 records of 640 bits per beat, one record
    per cycle; KR = 3 is not a power of two, so ceil(records / 3) takes a sequential divider."""
    cfg = _tlmm_cfg(16, 8, 32, 8)
    i = _tmm(1, 2048, 2048)                       # 683 groups: 43 chunks, 256 blocks
    # the epilogue: E = 4 outputs per cycle (4 | L, Q, SB/8)
    row = cycles.TLMM_ROW_FIXED + (48 + 27 + 3 + 256) + 42 * 256 + 128 * 16 // 4
    rec_bits = 13 + 8                             # bits(ceil(65535 / 16) = 4096) + bits(128)
    setup = 1 + 9 + rec_bits + 2
    params = 8 * 2048 // 256
    assert cycles.tmatmul_cycles(i, cfg) == (cycles.TLMM_SETUP + setup + params
                                             + cycles.READ_LATENCY + row)
    # wider beats never slow the stream below one record per cycle: the same engine at 16 B
    # (3 beats per record) is slower by 2 cycles per record but the first of each chunk
    slow = cycles.tmatmul_cycles(i, _tlmm_cfg(16, 8, 16, 1))
    assert slow > cycles.tmatmul_cycles(i, cfg) + 43 * 2 * 255


def test_pipeline_exposes_the_first_fetch_and_the_last_epilogue():
    # GEMV, dense int8, K = 1024: per tile 66 ring entries and memory rows (R + k_words) against
    # 64 k-groups, so fetch-bound; the last tile's epilogue (one row: C/E = 4 cycles, plus the
    # R + 1 parameter cycles) comes after its last entry
    i = _mm(LayerFormat(), 1, 1024, 1024)
    assert cycles.matmul_pipeline(i, CFG) == 64 * 66 + 4 + 3
    # 16 rows, one tile: the first pair waits for the tile (66), the other 7 pairs compute back
    # to back (64 each), then the last pair's epilogue (2 rows x 16 channels / 4 lanes)
    i = _mm(LayerFormat(), 16, 1024, 16)
    assert cycles.matmul_pipeline(i, CFG) == 66 + 7 * 64 + 8
    # never faster than the slowest stream, never slower than all three one after another
    for fmt in (LayerFormat(), LayerFormat(2, 4), LayerFormat(1, 1, 4)):
        for rows, K, N in ((1, 64, 64), (5, 512, 300), (16, 64, 512), (2, 2048, 48)):
            i = _mm(fmt, rows, K, N)
            p = cycles.matmul_pipeline(i, CFG)
            assert max(cycles.matmul_compute(i), cycles.matmul_fetch(i, CFG)) <= p
            assert p <= (cycles.matmul_compute(i) + cycles.matmul_fetch(i, CFG)
                         + cycles.matmul_epilogue(i, CFG))
    # tiles beyond the steady state are extrapolated, not stepped: a LLaMA-7B-sized prefill
    # layer (688 tiles x 256 row pairs) is a few steps
    big = _mm(LayerFormat(), 512, 4096, 11008)
    assert cycles.matmul_pipeline(big, CFG) >= cycles.matmul_compute(big)


def test_pipeline_extrapolation_follows_the_stepped_pipeline(monkeypatch):
    rng = np.random.default_rng(3)
    small = AccelConfig(chains=4, chain_len=4, mem_ports=2, port_bytes=8, act_depth=512,
                        weight_depth=64, addr_bits=16)
    worst = 0.0
    for cfg in (CFG, small):
        for _ in range(60):
            fmt = (LayerFormat(), LayerFormat(2, 4), LayerFormat(1, 1, 4))[rng.integers(3)]
            rows, kw = int(rng.integers(1, 40)), int(rng.integers(1, 24))
            N = int(rng.integers(1, 3000))
            i = Instr(Opcode.MATMUL, FLAG_INT4 if fmt.int4 else 0, rows=rows, k_words=kw,
                      n_tiles=-(-N // (cfg.chains * fmt.r)), n=N, words=-(-N // cfg.chain_len),
                      tile_mem_rows=tile_mem_rows(cfg, fmt, kw), lgm=fmt.lgm, lgr=fmt.lgr)
            cycles.matmul_pipeline.cache_clear()
            fast = cycles.matmul_pipeline(i, cfg)
            monkeypatch.setattr(cycles, "_EXTRAPOLATE", False)
            cycles.matmul_pipeline.cache_clear()
            stepped = cycles.matmul_pipeline(i, cfg)
            monkeypatch.setattr(cycles, "_EXTRAPOLATE", True)
            worst = max(worst, abs(fast - stepped) / stepped)
    cycles.matmul_pipeline.cache_clear()
    assert worst < 0.005


# -- the terms of the other instructions (built-in values: the RTL's documented formulas) ------

TF = AccelConfig(chains=4, chain_len=4, mem_ports=2, port_bytes=8, act_depth=512,
                 weight_depth=64, addr_bits=16, transformer=True)    # SB = 16 = 4 act words
U280 = AccelConfig(chains=16, chain_len=16, mem_ports=8, port_bytes=32, act_depth=4096,
                   weight_depth=1024, transformer=True, attn_heads=16)  # SB = 256: 8 instructions


def _builtin(i, cfg, pos=0):
    return cycles.instr_cycles(i, cfg, pos, fit=False)


def test_vector_unit_terms_are_the_rtl_formulas():
    # hw/sfu.py VectorUnit: per row 2*nw*L + (words - nw) + 67 (RMSNORM), nw*(L+1) + (words -
    # nw) + 2 (SILUMUL, RELU2 and GELU alike; nw*L with TANH, no gate word), 4 cycles per
    # rotated pair (ROPE); 9 (13) per instruction
    L = CFG.chain_len
    rms = Instr(Opcode.RMSNORM, rows=3, n=5 * L - 3, words=7)
    assert _builtin(rms, CFG) == cycles.ISSUE + 9 + 3 * (2 * 5 * L + 2 + 67)
    for flags in (0, FLAG_RELU2, FLAG_GELU):
        silu = Instr(Opcode.SILUMUL, flags, rows=2, n=3 * L, words=3)
        assert _builtin(silu, CFG) == cycles.ISSUE + 9 + 2 * (3 * (L + 1) + 2)
    tanh = Instr(Opcode.SILUMUL, FLAG_TANH, rows=2, n=3 * L - 1, words=4)
    assert _builtin(tanh, CFG) == cycles.ISSUE + 9 + 2 * (3 * L + 1 + 2)
    rope = Instr(Opcode.ROPE, rows=2, heads=3, hd=20, head_stride=32, words=6, cs_words=3)
    assert _builtin(rope, CFG) == cycles.ISSUE + 13 + 4 * 2 * 3 * 10
    # ABSQUANT's term is the engine formula the ternary path documents
    for flags in (0, FLAG_GAMMA):
        aq = Instr(Opcode.ABSQUANT, flags, rows=3, n=40, words=4)
        assert _builtin(aq, CFG) == cycles.ISSUE + cycles.absquant_cycles(aq, CFG)


def test_load_store_move_words_and_pay_latency_once():
    L, SB = TF.chain_len, TF.beat_bytes
    for op, lat in ((Opcode.LOAD, cycles.READ_LATENCY), (Opcode.STORE, 0)):
        c = [_builtin(Instr(op, b=n), TF) for n in (4, 8, 64)]
        assert c[1] - c[0] == 4 and c[2] - c[1] == 56       # one act word per cycle (SB/L = 4)
        assert c[0] == cycles.ISSUE + 4 + lat
        pos = Instr(op, FLAG_POS, b=8, pos_stride=3)
        # flag POS: one address cycle, whatever POS is
        assert _builtin(pos, TF, 0) == _builtin(pos, TF, 1000) > c[1]
    assert SB // L == 4


def test_gather_pays_a_read_per_row_and_per_id_superbeat():
    one = _builtin(Instr(Opcode.GATHER, rows=1, n=4, ids=0, stride=1, table_rows=9), TF)
    four = _builtin(Instr(Opcode.GATHER, rows=4, n=4, ids=0, stride=1, table_rows=9), TF)
    five = _builtin(Instr(Opcode.GATHER, rows=5, n=4, ids=0, stride=1, table_rows=9), TF)
    # 4 ids per 16-byte super-beat: rows 2..4 reuse the first id read, row 5 reads another
    per_row = cycles.READ_LATENCY + 4 + 4
    assert four - one == 3 * per_row
    assert five - four == per_row + cycles.READ_LATENCY + 2


def _attn(rows=1, slots=2, grp=3, hdw=2, cfg=U280, extra=0):
    wpb = cfg.beat_bytes // cfg.chain_len
    return Instr(Opcode.ATTN, ext=0, v_ext=0, a=0, out=0, q_words=slots * grp * hdw, rows=rows,
                 lanes=slots * grp, grp=grp, slots=slots, hd_words=hdw,
                 pos_sb=-(-slots * hdw // wpb) + extra)


def test_attention_grows_with_pos_in_blocks_of_16_keys():
    i = _attn()
    c = [_builtin(i, U280, p) for p in range(40)]
    assert all(b > a for a, b in zip(c, c[1:], strict=False))       # causal: pos + 1 keys
    steps = [b - a for a, b in zip(c, c[1:], strict=False)]
    # a new block of 16 keys (n = 17, 33) costs more than one more key in a block
    assert steps[15] > steps[14] and steps[31] > steps[30] and steps[16] == steps[14]
    # a prefill of 4 rows at pos p = its rows' keys p+1 .. p+4
    four = cycles.features(_attn(rows=4), U280, 10)[1]
    assert four["slots"] == sum(cycles.features(i, U280, 10 + b)[1]["slots"]
                                for b in range(4))
    # a key costs a K and a V slot per word of the head, whatever the query heads of the
    # pass; more query heads cost only their q copy and output words
    one = cycles.features(_attn(grp=1), U280, 9)[1]
    three = cycles.features(_attn(grp=3), U280, 9)[1]
    assert one["slots"] == three["slots"] == 2 * 10 * 2
    assert three["head_words"] == 3 * one["head_words"]
    # a position block's beats without a slot are skipped one per cycle
    assert cycles.features(_attn(extra=2), U280, 9)[1]["skip_beats"] == 2 * 10 * 2


def _isa(cfg, prog, pos=0, extra=b""):
    """Run ``prog`` (END appended) at super-beat 0 of a zero image in the ISA model with
    super-beats [0, 64) classed as program; returns its stats."""
    SB = cfg.beat_bytes
    code = b"".join(i.encode() for i in prog + [Instr(Opcode.END)])
    img = code + bytes(64 * SB - len(code)) + extra + bytes(4096 * SB)
    model = IsaModel(cfg, img, pos=pos, regions=[(0, 64, "program"), (64, 64 + 8192, "kv")])
    return model.run(0)


def test_attention_key_traffic_matches_the_isa_model():
    # one act word per super-beat (SB = L): a slot is one kv head's word, a position block
    # hd_words super-beats, so the unit's K and V slots per key are the super-beats the ISA
    # model counts
    cfg = AccelConfig(chains=8, chain_len=16, mem_ports=1, port_bytes=16, act_depth=2048,
                      transformer=True, attn_heads=4)
    for rows, grp, hdw, pos in ((1, 3, 2, 13), (3, 4, 1, 0), (2, 2, 3, 40)):
        i = replace(_attn(rows, 1, grp, hdw, cfg), ext=64, v_ext=64 + 2048, a=0,
                    out=rows * grp * hdw)
        stats = _isa(cfg, [i], pos)
        f = cycles.features(i, cfg, pos)[1]
        assert (f["slots"] + f["skip_beats"]) * cfg.beat_bytes == stats.traffic["kv_read"]


def test_fetch_misses_match_the_isa_model_program_reads():
    # a program super-beat is read once per entry into it, and again after a STORE (SB = 16:
    # every instruction is fetched from memory)
    nop = Instr(Opcode.LOAD)
    for cfg in (U280, TF):
        for prog in ([nop] * 19, [nop, Instr(Opcode.STORE)] * 5 + [nop] * 9,
                     [Instr(Opcode.STORE, FLAG_POS)] + [nop] * 12):
            misses = sum(cycles.fetch_misses(prog + [Instr(Opcode.END)], cfg))
            stats = _isa(cfg, prog)
            # SB < 32: a fetch reads the instruction's 32 / SB super-beats
            beats = max(1, 32 // cfg.beat_bytes)
            assert misses * beats * cfg.beat_bytes == stats.traffic["program_read"]


# -- calibrations ----------------------------------------------------------------------------

def test_fit_values_apply_and_unknown_names_fail(tmp_path):
    i = Instr(Opcode.RMSNORM, rows=2, n=64, words=4)
    fitted = {"config_digest": "x", "read_latency": 50,
              "kinds": {"RMSNORM": {"params": {"rows": 100.0}},
                        "LOAD": {"params": {"fixed": 7.0}}, "RUN": {"params": {"fixed": 10}}}}
    base = _builtin(i, TF)
    assert cycles.instr_cycles(i, TF, fit=fitted) == base + 2 * (100 - 67)
    load = Instr(Opcode.LOAD, b=8)
    # read latency is an input: 50 instead of 32
    assert cycles.instr_cycles(load, TF, fit=fitted) == _builtin(load, TF) + 3 + 18
    path = tmp_path / "c.json"
    path.write_text(json.dumps(fitted))
    p = cycles.predict([i, Instr(Opcode.END)], TF, fit=path)
    assert p["run_overhead"] == 10 and p["calibration"] == str(path)
    assert p["total"] == p["per_instruction"][0] + p["instruction_fetch"] + 10
    with pytest.raises(FileNotFoundError, match="no calibration"):
        cycles.predict([i], TF, fit="no-such-board")


def test_stored_fits_load_by_digest_then_by_engine_shape():
    from hwflow.boards import load_board
    from hwflow.mapping.accel_config import choose_config

    for board in ("u280", "kv260"):
        path = cycles.FITS_DIR / f"{board}.json"
        data = json.loads(path.read_text())
        cfg = choose_config(load_board(board))
        cal = cycles.fit_for(cfg)
        assert cal.source == str(path)
        assert cal.config_digest == data["config_digest"]
        assert cal.values("ATTN") == {**dict(cycles.TERMS["ATTN"]),
                                      **data["kinds"]["ATTN"]["params"]}
        # the same engine shape with other buffer depths or TLMM sizes: the same file
        assert cycles.fit_for(replace(cfg, act_depth=cfg.act_depth // 2)).source \
            == str(path)
        # named by board
        assert cycles.fit_for(cfg, board).source == str(path)
        # the stored held-out errors meet the 10 % target
        for kind, e in data["kinds"].items():
            if e.get("heldout"):
                assert e["heldout_max_abs_error_pct"] <= 10.0, kind
    # an engine of another shape: the built-in values
    assert cycles.fit_for(TF) is cycles.BUILTIN
