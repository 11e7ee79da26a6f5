"""``AccelConfig``'s state-space unit sizes: checked at construction, and absent from the digest
of an engine without the units (the fields added since at their defaults too), so a digest
stays what it was before the fields existed."""

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
def test_stored_calibrations_select_by_digest_and_the_board_engine_by_shape(board):
    """The stored fit's engine (the board's with the calibration's state-space units,
    ``hwflow.cycle_fit.calibration_config``) keeps its digest; the board's own engine, without
    the units, hashes as it did before they existed (the units' fields dropped) and selects the
    fit by its shape."""
    from hwflow.boards import load_board
    from hwflow.cycle_fit import calibration_config
    from hwflow.mapping.accel_config import choose_config
    from hwflow.mapping.cycles import stored_fit

    fit = json.loads((FITS / f"{board}.json").read_text())
    cfg = AccelConfig(**fit["config"])
    plain = choose_config(load_board(board))
    assert cfg == calibration_config(plain) and cfg.digest() == fit["config_digest"]
    assert not plain.ssm and plain.digest() != cfg.digest()
    assert replace(plain, ssm_uram=True, ssm_lanes=4).digest() == plain.digest()
    assert stored_fit(plain).source.endswith(f"{board}.json")
    assert replace(cfg, ssm_uram=True).digest() != cfg.digest()


@pytest.mark.parametrize("bad,match", [
    (dict(transformer=False), "transformer path"),
    (dict(conv_taps=1), "conv_taps >= 2"),
    (dict(ssm_channels=0), "ssm_channels"),
    (dict(hadamard_block=48), "power of two"),
    (dict(hadamard_block=8), "power of two >= chain_len"),
    (dict(ssm_states=-1), ">= 0"),
    (dict(ssm_lanes=3), "ssm_lanes 3 must be a power of two"),
    (dict(ssm_lanes=16), "at most chain_len / 2"),
])
def test_state_space_sizes_are_checked(bad, match):
    AccelConfig(**SSM)
    with pytest.raises(ValueError, match=match):
        AccelConfig(**(SSM | bad))
