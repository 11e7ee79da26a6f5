"""Parameter blocks of the state-space instructions (docs/architecture.md, "State-space path"):
the one packer (the mapper's) and its exact inverse (the ISA model's).

Both blocks are per *beat* of ``L`` channels (one activation word), so a unit streaming ``L``
channels a cycle takes one record per beat; channels past ``n`` have zero parameters. No record
straddles a super-beat (``hw.contract.record_slots``, which the executors read too): a record
of ``R <= SB`` bytes takes one of the ``SB // R`` slots of a super-beat, ``R`` bytes apart from
byte 0; a larger one takes ``ceil(R / SB)`` whole super-beats. So the executor picks a record
out of one super-beat (or gathers whole super-beats), with no byte-level realignment.

* CONV, per beat (``L * (K + 6)`` bytes): the ``K`` int8 taps of each of the ``L`` channels
  (channel-major, oldest tap first), then ``L`` int32 biases, then ``L`` u16 multipliers
  (little-endian);
* SCAN, per beat (``L * (2 S + 4)`` bytes): the ``S`` u16 decay-rate codes of each of the
  ``L`` channels (channel-major), then ``L`` int32 D-skip multipliers (signed).
"""

from __future__ import annotations

import numpy as np

from hwflow.hw.contract import conv_record_bytes, record_slots, scan_record_bytes

__all__ = ["pack_conv", "unpack_conv", "pack_scan", "unpack_scan", "block_bytes"]


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def block_bytes(record: int, n: int, L: int, SB: int) -> int:
    """Bytes of a block of ``ceil(n / L)`` records in their slots (:func:`record_slots`)."""
    per, span = record_slots(record, SB)
    return _cdiv(_cdiv(n, L), per) * span * SB


def _place(rec: np.ndarray, SB: int) -> bytes:
    """Records ``[beats, R]`` (uint8) in their slots."""
    beats, R = rec.shape
    per, span = record_slots(R, SB)
    out = np.zeros((_cdiv(beats, per), span * SB), np.uint8)
    for j in range(per):
        part = rec[j::per]
        out[:len(part), j * R:(j + 1) * R] = part
    return out.tobytes()


def _take(raw: bytes, beats: int, R: int, SB: int) -> np.ndarray:
    """The ``[beats, R]`` records of a block (:func:`_place`'s inverse)."""
    per, span = record_slots(R, SB)
    sbs = np.frombuffer(raw, np.uint8)[:_cdiv(beats, per) * span * SB].reshape(-1, span * SB)
    rec = np.zeros((beats, R), np.uint8)
    for j in range(per):
        rec[j::per] = sbs[:len(rec[j::per]), j * R:(j + 1) * R]
    return rec


def _padded(a: np.ndarray, beats: int, L: int) -> np.ndarray:
    out = np.zeros((beats * L,) + a.shape[1:], dtype=a.dtype)
    out[:a.shape[0]] = a
    return out.reshape(beats, L, *a.shape[1:])


def _pack(fields, L: int, SB: int) -> bytes:
    """The block of per-channel ``fields`` (arrays ``[n, ...]`` of their little-endian dtypes),
    each beat's record the fields' ``L`` channels one field after the other."""
    beats = _cdiv(len(fields[0]), L)
    return _place(np.concatenate([_padded(np.ascontiguousarray(a), beats, L).view(np.uint8)
                                  .reshape(beats, -1) for a in fields], axis=1), SB)


def pack_conv(w, bias, mult, L: int, SB: int) -> bytes:
    """The CONV block of taps ``w`` int8 ``[n, K]``, int32 ``bias [n]`` and u16 ``mult [n]``."""
    return _pack([np.asarray(w, np.int8), np.asarray(bias, "<i4"), np.asarray(mult, "<u2")],
                 L, SB)


def unpack_conv(raw: bytes, n: int, taps: int, L: int, SB: int) -> tuple:
    """``(w [n, K] int64, bias [n], mult [n])`` of a CONV block (:func:`pack_conv`'s inverse)."""
    beats, K = _cdiv(n, L), taps
    rec = _take(raw, beats, conv_record_bytes(L, K), SB)
    w = rec[:, :L * K].copy().view(np.int8).reshape(beats * L, K)
    bias = rec[:, L * K:L * (K + 4)].copy().view("<i4").reshape(-1)
    mult = rec[:, L * (K + 4):].copy().view("<u2").reshape(-1)
    return (w[:n].astype(np.int64), bias[:n].astype(np.int64), mult[:n].astype(np.int64))


def pack_scan(a_codes, d_mult, L: int, SB: int) -> bytes:
    """The SCAN block of decay-rate codes ``a_codes`` u16 ``[n, S]`` and D multipliers
    ``d_mult`` (signed, ``[n]``)."""
    return _pack([np.asarray(a_codes, "<u2"), np.asarray(d_mult, "<i4")], L, SB)


def unpack_scan(raw: bytes, n: int, states: int, L: int, SB: int) -> tuple:
    """``(a_codes [n, S], d_mult [n])`` int64 of a SCAN block (:func:`pack_scan`'s inverse)."""
    beats, S = _cdiv(n, L), states
    rec = _take(raw, beats, scan_record_bytes(L, S), SB)
    a = rec[:, :2 * S * L].copy().view("<u2").reshape(beats * L, S)
    d = rec[:, 2 * S * L:].copy().view("<i4").reshape(-1)
    return a[:n].astype(np.int64), d[:n].astype(np.int64)
