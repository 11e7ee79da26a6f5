"""TMATMUL weight block: the memory layout the TLMM engine streams (docs/architecture.md,
"Ternary path", "TMATMUL weight block").

A block is, from super-beat ``wgt``:

1. parameters: ``n_out`` records of 8 bytes (``bias`` int32 LE, ``mult`` u16 LE, 2 zero bytes),
   padded with zeros to whole super-beats;
2. the index stream: for chunk ``c < ceil(k_groups / T)``, for channel block ``j < ceil(n_out /
   Q)``, one record of ``T*Q`` group indices, entry ``qq*T + tt`` = the index of channel
   ``j*Q + qq``, group ``c*T + tt`` (:func:`hwflow.golden.ternary.encode_groups`); channels and
   groups past the layer hold :func:`ZERO_INDEX`. A record is its indices packed densely,
   ``GROUP_BITS[G]`` bits each, LSB first (:func:`hwflow.golden.ternary.pack_indices`), ``RB =
   T*Q*GROUP_BITS[G]`` bits, and never straddles a super-beat (``8*SB`` bits):

   * ``RB <= 8*SB``: ``k = (8*SB) // RB`` records per super-beat, record ``r`` of the stream in
     beat ``r // k`` at bit offset ``(r % k) * RB``; the rest of every beat is zero;
   * ``RB > 8*SB``: every record takes ``ceil(RB / (8*SB))`` whole super-beats (bit ``i`` of
     the record is bit ``i % (8*SB)`` of its beat ``i // (8*SB)``), zero past ``RB``.

   So the engine takes a record out of one beat with a ``k``-way select, or concatenates whole
   beats, with no bit-offset shifter. The stream is ``ceil(records / k) * beats_per_record``
   super-beats; the engine ignores the zero padding (the unpacker too).

:func:`pack_ternary_block` writes it, :func:`unpack_ternary_block` is its exact inverse (the ISA
functional model executes that), :func:`block_layout` gives the sizes both sides agree on.
"""

from __future__ import annotations

import numpy as np

from hwflow.golden.ternary import (
    GROUP_BITS,
    decode_groups,
    encode_groups,
    pack_indices,
    unpack_indices,
)

__all__ = ["ZERO_INDEX", "PARAM_RECORD_BYTES", "block_layout", "pack_ternary_block",
           "unpack_ternary_block"]

#: Bytes of one (bias, mult) parameter record.
PARAM_RECORD_BYTES = 8
_PARAM_DTYPE = np.dtype([("bias", "<i4"), ("mult", "<u2"), ("pad", "<u2")])


def ZERO_INDEX(G: int) -> int:  # noqa: N802 - the doc's name for a constant of G
    """The index of the all-zero group (every digit ``t + 1 = 1``): ``(3**G - 1) / 2``."""
    _check_g(G)
    return (3 ** G - 1) // 2


def _check_g(G: int) -> None:
    if G not in GROUP_BITS:
        raise ValueError(f"group size G = {G} is not one of {sorted(GROUP_BITS)}")


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def block_layout(n_out: int, K: int, G: int, T: int, Q: int, SB: int) -> dict:
    """Sizes of a TMATMUL weight block.

    Parameters
    ----------
    n_out, K : int
        Output channels and input features of the layer.
    G, T, Q : int
        Group size, tables (groups per record) and table replicas (channels per record).
    SB : int
        Super-beat bytes.

    Returns
    -------
    dict
        ``k_groups`` (``ceil(K / G)``), ``n_chunks`` (``ceil(k_groups / T)``), ``n_blocks``
        (``ceil(n_out / Q)``), ``records`` (``n_chunks * n_blocks``, per activation row),
        ``record_bits`` (``RB = T * Q * GROUP_BITS[G]``), ``records_per_beat`` (``k = (8*SB)
        // RB``, at least 1), ``beats_per_record`` (``ceil(RB / (8*SB))``: 1 unless a record
        is wider than a super-beat), ``param_beats``, ``stream_beats`` (super-beats of the
        index stream, ``ceil(records / k) * beats_per_record``, re-read for every row),
        ``total_beats`` (the whole block).
    """
    _check_g(G)
    if min(T, Q, SB) < 1 or min(n_out, K) < 0:
        raise ValueError(f"bad TMATMUL sizes n_out={n_out} K={K} T={T} Q={Q} SB={SB}")
    k_groups = _cdiv(K, G)
    n_chunks = _cdiv(k_groups, T)
    n_blocks = _cdiv(n_out, Q)
    record_bits = T * Q * GROUP_BITS[G]
    records = n_chunks * n_blocks
    per_beat = max(1, 8 * SB // record_bits)
    beats_per_record = _cdiv(record_bits, 8 * SB)
    param_beats = _cdiv(PARAM_RECORD_BYTES * n_out, SB)
    stream_beats = _cdiv(records, per_beat) * beats_per_record
    return {
        "k_groups": k_groups, "n_chunks": n_chunks, "n_blocks": n_blocks,
        "records": records, "record_bits": record_bits, "records_per_beat": per_beat,
        "beats_per_record": beats_per_record,
        "param_beats": param_beats, "stream_beats": stream_beats,
        "total_beats": param_beats + stream_beats,
    }


def row_read_words(K: int, G: int, T: int, L: int) -> int:
    """Activation words TMATMUL reads from the start of each row of ``K`` inputs: whole chunks
    of ``T*G`` bytes (``ceil(ceil(K/G)/T)`` of them; the bytes past ``K`` meet the padding
    index), so up to ``T*G - 1`` bytes past the row. The input area must leave them free of the
    output rows."""
    return _cdiv(_cdiv(_cdiv(K, G), T) * T * G, L)


def pack_ternary_block(t, bias, mult, G: int, T: int, Q: int, SB: int) -> bytes:
    """The TMATMUL weight block of ternary weights ``t`` (int8 ``[n_out, K]`` in {-1, 0, 1}).

    Parameters
    ----------
    t : array_like, int8 ``[n_out, K]``
    bias : array_like, int32 ``[n_out]`` (in units of ``acc * m``)
    mult : array_like, u16 ``[n_out]``
    G, T, Q, SB : int
        See :func:`block_layout`.

    Returns
    -------
    bytes
        ``total_beats * SB`` bytes.
    """
    t = np.asarray(t)
    if t.ndim != 2:
        raise ValueError(f"ternary weight must be 2-D [n_out, K], got shape {t.shape}")
    n_out, K = t.shape
    if t.size and (t.min() < -1 or t.max() > 1):
        raise ValueError("ternary weight has values outside {-1, 0, 1}")
    bias = np.asarray(bias, dtype=np.int64).reshape(-1)
    mult = np.asarray(mult, dtype=np.int64).reshape(-1)
    if bias.shape != (n_out,) or mult.shape != (n_out,):
        raise ValueError(f"bias and mult need {n_out} entries, got {bias.size} and {mult.size}")
    if bias.size and (bias.min() < -(2 ** 31) or bias.max() >= 2 ** 31):
        raise ValueError("bias outside int32")
    if mult.size and (mult.min() < 0 or mult.max() > 0xFFFF):
        raise ValueError("mult outside u16")
    lay = block_layout(n_out, K, G, T, Q, SB)

    params = np.zeros(n_out, dtype=_PARAM_DTYPE)
    params["bias"] = bias
    params["mult"] = mult
    head = params.tobytes().ljust(lay["param_beats"] * SB, b"\0")

    nc, nb = lay["n_chunks"], lay["n_blocks"]
    idx = np.full((nb * Q, nc * T), ZERO_INDEX(G), dtype=np.int64)
    if n_out and K:
        idx[:n_out, :lay["k_groups"]] = encode_groups(t, G)
    # [nb, Q, nc, T] -> [nc * nb, Q * T]: chunk-major records, entry qq*T + tt
    recs = idx.reshape(nb, Q, nc, T).transpose(2, 0, 1, 3).reshape(nc * nb, Q * T)
    body = bytearray(lay["stream_beats"] * SB)
    k, slot = lay["records_per_beat"], lay["beats_per_record"] * SB
    for beat in range(0, lay["records"], k):
        # k records back to back at bit offsets i*RB: one dense packing of their indices;
        # a record of several beats is its dense packing, zero-padded to whole beats
        group = pack_indices(recs[beat:beat + k], G)
        base = (beat // k) * slot
        body[base:base + len(group)] = group
    return head + bytes(body)


def unpack_ternary_block(data, n_out: int, K: int, G: int, T: int, Q: int, SB: int):
    """Inverse of :func:`pack_ternary_block`: ``(t int8 [n_out, K], bias int64 [n_out],
    mult int64 [n_out])``.

    Raises ``ValueError`` when the block is too short, an index is not below ``3**G``, or a
    group index past the layer's K (within ``n_out``) does not contribute 0 (the engine reads
    whatever the activation buffer holds there).
    """
    lay = block_layout(n_out, K, G, T, Q, SB)
    data = bytes(data)
    if len(data) < lay["total_beats"] * SB:
        raise ValueError(f"TMATMUL block needs {lay['total_beats'] * SB} bytes, got {len(data)}")
    params = np.frombuffer(data[:PARAM_RECORD_BYTES * n_out], dtype=_PARAM_DTYPE)
    bias = params["bias"].astype(np.int64)
    mult = params["mult"].astype(np.int64)

    nc, nb = lay["n_chunks"], lay["n_blocks"]
    start = lay["param_beats"] * SB
    k, slot = lay["records_per_beat"], lay["beats_per_record"] * SB
    flat = np.concatenate([np.zeros(0, np.int64)] + [
        unpack_indices(data[start + (r // k) * slot:start + (r // k + 1) * slot], G,
                       min(k, lay["records"] - r) * T * Q)
        for r in range(0, lay["records"], k)])
    if flat.size and flat.max() >= 3 ** G:
        raise ValueError(f"group index {int(flat.max())} >= 3**{G}")
    idx = flat.reshape(nc, nb, Q, T).transpose(1, 2, 0, 3).reshape(nb * Q, nc * T)
    kg = lay["k_groups"]
    idx = idx[:n_out]
    if np.any(idx[:, kg:] != ZERO_INDEX(G)):
        raise ValueError("index of a group past k_groups is not ZERO_INDEX")
    idx = idx[:, :kg]
    if K % G and n_out:
        # digits of the last group past K must be 1 (weight 0)
        tail = (idx[:, -1:] // (3 ** np.arange(G))) % 3
        if np.any(tail[:, K % G:] != 1):
            raise ValueError("last group has nonzero weights past K")
    t = decode_groups(idx, G, K) if n_out else np.zeros((0, K), dtype=np.int8)
    return t, bias, mult
