"""mapping.decoder_sizing: a board's engine enlarged for a decoder, one rule for the compile
from weights and the shape-only compile (the predictions: tests/hwflow/test_predict.py)."""

from dataclasses import replace
from pathlib import Path

import pytest

from hwflow.boards import load_board
from hwflow.compiler.llm_config import shape_decoder, shape_from_config
from hwflow.mapping.accel_config import choose_config
from hwflow.mapping.decoder_sizing import ACT_ADDR_WORDS, lower_shape, size_buffers, tlmm_engine
from hwflow.mapping.errors import MappingError

CONFIGS = Path(__file__).resolve().parents[2] / "examples" / "configs"


def test_buffers_grow_to_the_model_with_one_note_each():
    """LLaMA-2-7B's down (K = 11008) needs 2 x 690 ring entries at L = 16: the U280's 1024
    becomes 2048; one activation row (4928 words) does not fit 4096 words: 8-row buckets."""
    cs = shape_from_config(CONFIGS / "llama-2-7b.json")
    brd = load_board("u280")
    cfg = choose_config(brd)
    sized, notes = size_buffers(shape_decoder(cs, 256), cfg, brd)
    assert sized.weight_depth == 2048 and cfg.weight_depth == 1024
    assert sized.act_depth > cfg.act_depth and sized.act_depth <= ACT_ADDR_WORDS == 1 << 16
    assert any(n.startswith("weight_depth 1024") for n in notes)
    assert any(n.startswith(f"act_depth {cfg.act_depth}") for n in notes)
    again, more = size_buffers(shape_decoder(cs, 256), sized, brd)
    assert again == sized and not more                 # a sized engine is left as it is


def test_ternary_linears_get_the_tlmm_engine_or_a_clear_refusal():
    cs = shape_from_config(CONFIGS / "bitnet-b1.58-0.7b.json")
    qd = shape_decoder(cs, 256, "ternary")
    brd = load_board("kv260")
    cfg, sizing = tlmm_engine(qd, choose_config(brd), brd)
    assert cfg.tlmm and (cfg.tlmm_t, cfg.tlmm_q) == (12, 8) and sizing["source"] == "board"
    assert cfg.tlmm_acc_depth >= cs.shape.intermediate      # gate/up: 4096 outputs
    bare = replace(brd, engine={**brd.engine, "tlmm": False})
    with pytest.raises(MappingError, match=r"built without the ternary table-lookup engine"):
        tlmm_engine(qd, choose_config(bare), bare)


def test_lower_shape_refuses_a_fixed_engine_too_small():
    cs = shape_from_config(CONFIGS / "llama-2-7b.json")
    brd = load_board("u280")
    with pytest.raises(MappingError, match=r"cannot map this decoder .* act_depth >= 4928"):
        lower_shape(cs.shape, choose_config(brd), brd, max_context=256, adjust=False)


def test_prefill_buckets_take_the_rows_the_tlmm_engine_fetches_its_weights_for():
    """BitNet 0.7B on the KV260, whose TLMM engine reads its weights once for 16 rows (4
    passes of 4): 16 rows of activations (16 x 1113 + 2539 words: 32768) need 384 RAMB36E2 of
    its 144 as byte lanes, so the activation buffer goes to URAM (3 copies x 2 x 8 = 48 of
    64 URAM288) and the rest stays in block RAM."""
    from hwflow.mapping.accel_config import check_fit
    from hwflow.mapping.llm_lower import act_row_words

    cs = shape_from_config(CONFIGS / "bitnet-b1.58-0.7b.json")
    qd = shape_decoder(cs, 256, "ternary")
    brd = load_board("kv260")
    cfg, _ = tlmm_engine(qd, choose_config(brd), brd)
    assert cfg.tlmm_rows * cfg.tlmm_passes == 16
    sized, notes = size_buffers(qd, cfg, brd, ternary=True)
    words, fixed = act_row_words(qd, sized)
    assert sized.act_depth == 32768 and (sized.act_depth - fixed) // words >= 16
    assert 16 * words + fixed > 16384
    assert any("prefill buckets of up to" in n for n in notes)
    assert sized.act_uram and not sized.ring_uram and not sized.tlmm_uram
    assert any(n.startswith("activation buffer placed in URAM") for n in notes)
    fit = check_fit(sized, brd)
    assert fit["uram"]["used"] == 48 and fit["bram"]["used"] <= 144
