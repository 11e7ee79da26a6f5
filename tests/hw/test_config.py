"""``AccelConfig``'s state-space unit sizes: checked at construction, and absent from the digest
of an engine without the units, so the stored calibrations (keyed by digest) still select."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from hwflow.hw.config import AccelConfig

FITS = Path(__file__).resolve().parents[2] / "mapping" / "fits"
SSM = dict(transformer=True, ssm_states=16, ssm_channels=320, conv_taps=4, conv_words=20,
           hadamard_block=64)


@pytest.mark.parametrize("board", ["u280", "kv260"])
def test_stored_calibrations_keep_their_digest(board):
    fit = json.loads((FITS / f"{board}.json").read_text())
    cfg = AccelConfig(**fit["config"])
    assert not cfg.ssm and cfg.digest() == fit["config_digest"]
    assert replace(cfg, transformer=True, **{k: v for k, v in SSM.items()
                                             if k != "transformer"}).digest() != cfg.digest()


@pytest.mark.parametrize("bad,match", [
    (dict(transformer=False), "transformer path"),
    (dict(conv_taps=1), "conv_taps >= 2"),
    (dict(ssm_channels=0), "ssm_channels"),
    (dict(hadamard_block=48), "power of two"),
    (dict(hadamard_block=8), "power of two >= chain_len"),
    (dict(ssm_states=-1), ">= 0"),
])
def test_state_space_sizes_are_checked(bad, match):
    AccelConfig(**SSM)
    with pytest.raises(ValueError, match=match):
        AccelConfig(**(SSM | bad))
