"""mapping.cycles: the structure of the MATMUL terms (compute, weight fetch, epilogue)."""

from hwflow.hw.config import AccelConfig
from hwflow.hw.isa import FLAG_INT4, Instr, Opcode
from hwflow.hw.sequencer import epilogue_lanes
from hwflow.mapping import cycles
from hwflow.mapping.weight_format import LayerFormat, tile_mem_rows

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


def test_epilogue_covers_the_tile_channels():
    # 1:4: C = 64 channels a tile, 4 rows (2 pairs), E = 4 epilogues, R = 2 parameter rows
    assert epilogue_lanes(CFG) == 4 and CFG.param_rows == 2
    i = _mm(LayerFormat(1, 4), 4, 64, 128)
    assert cycles.matmul_epilogue(i, CFG) == 2 * (4 * 64 // 4 + 2 + 2)
    # N = 100 in 2 tiles of 64: no bytes past the last tile (words·L = 112 < 128)
    i = _mm(LayerFormat(1, 4), 1, 64, 100)
    assert cycles.matmul_epilogue(i, CFG) == 2 * (64 // 4 + 1 + 2)


def test_gemv_is_fetch_bound_and_sparse_is_faster():
    dense = cycles.instr_cycles(_mm(LayerFormat(), 1, 1024, 1024), CFG)
    sparse = cycles.instr_cycles(_mm(LayerFormat(1, 4), 1, 1024, 1024), CFG)
    int4 = cycles.instr_cycles(_mm(LayerFormat(1, 1, 4), 1, 1024, 1024), CFG)
    assert sparse < dense and int4 <= dense
    total = cycles.predict([_mm(LayerFormat(), 1, 1024, 1024), Instr(Opcode.END)], CFG)
    assert total["total"] > dense
