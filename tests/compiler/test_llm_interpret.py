"""Golden integer decoder: chunked prefill, decode and one-shot prefill agree bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from hwflow.compiler.llm_frontend import load_decoder
from hwflow.compiler.llm_interpret import (
    KVCache,
    float_forward,
    float_generate,
    golden_generate,
    golden_step,
    top1_agreement,
)
from hwflow.compiler.llm_quant import quantize_decoder

from .llm_models import tiny_llama

IDS = [3, 141, 59, 26, 5, 35, 89, 79, 32, 38, 46, 264, 33, 8, 32, 79, 50, 28, 84, 19]


@pytest.fixture(scope="module")
def fd(tmp_path_factory):
    return load_decoder(tiny_llama(tmp_path_factory.mktemp("tiny_llama")), max_context=48)


@pytest.fixture(scope="module")
def qd(fd):
    return quantize_decoder(fd, 48)


def test_kv_cache_shape(qd):
    c = KVCache.empty(qd)
    assert len(c.k) == len(c.v) == 2
    assert c.k[0].shape == (48, 40) and c.v[1].dtype == np.int8


def test_chunked_prefill_equals_one_shot(qd):
    one = KVCache.empty(qd)
    full = golden_step(qd, IDS, 0, one)
    assert full.shape == (20, 320) and full.dtype == np.int8
    two = KVCache.empty(qd)
    # 17 rows: one full attention block of 16 keys plus one, so the second chunk crosses it.
    a = golden_step(qd, IDS[:17], 0, two)
    b = golden_step(qd, IDS[17:], 17, two)
    np.testing.assert_array_equal(np.concatenate([a, b]), full)
    for i in range(2):
        np.testing.assert_array_equal(one.k[i], two.k[i])
        np.testing.assert_array_equal(one.v[i], two.v[i])


def test_decode_equals_prefill_rows(qd):
    full = golden_step(qd, IDS, 0, KVCache.empty(qd))
    cache = KVCache.empty(qd)
    golden_step(qd, IDS[:15], 0, cache)
    for p in range(15, 20):
        row = golden_step(qd, [IDS[p]], p, cache)
        assert row.shape == (1, 320)
        np.testing.assert_array_equal(row[0], full[p])


def test_golden_generate_is_deterministic(fd, qd):
    r1 = golden_generate(qd, IDS[:6], 6)
    r2 = golden_generate(quantize_decoder(fd, 48), IDS[:6], 6)
    assert r1.tokens == r2.tokens and len(r1.tokens) == 6
    assert [x.shape for x in r1.step_logits] == [(6, 320)] + [(1, 320)] * 5
    assert r1.tokens[0] == int(np.argmax(r1.step_logits[0][-1]))
    for a, b in zip(r1.step_logits, r2.step_logits, strict=True):
        np.testing.assert_array_equal(a, b)


def test_golden_generate_matches_its_steps(qd):
    run = golden_generate(qd, IDS[:6], 4)
    full = golden_step(qd, IDS[:6] + run.tokens[:-1], 0, KVCache.empty(qd))
    np.testing.assert_array_equal(full[5:], np.concatenate([run.step_logits[0][-1:]]
                                                           + run.step_logits[1:]))


def test_float_generate_and_top1(fd, qd):
    toks = float_generate(fd, IDS[:5], 4)
    logits = float_forward(fd, IDS[:5] + toks[:-1])
    assert toks == [int(t) for t in np.argmax(logits[4:], axis=-1)]
    assert top1_agreement(fd, qd, IDS[:5], toks) == 1.0


def test_positions_past_max_context(qd):
    with pytest.raises(ValueError, match="max_context"):
        golden_step(qd, [1, 2], 47, KVCache.empty(qd))
