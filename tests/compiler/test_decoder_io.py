"""compiler.decoder_io: the decoder IR saved without pickles, byte for byte reproducible, read
back whole or a layer at a time; the npz archives it writes a member at a time."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from hwflow.compiler import decoder_io as dio
from hwflow.compiler.decoder import FloatDecoder, LazyLayers, QDecoder
from hwflow.compiler.llm_frontend import load_decoder
from hwflow.compiler.llm_quant import quantize_decoder

from .llm_models import tiny_llama
from .test_llm_quant import _same


@pytest.fixture(scope="module")
def fd(tmp_path_factory):
    return load_decoder(tiny_llama(tmp_path_factory.mktemp("tiny_llama")), max_context=32)


@pytest.fixture(scope="module")
def qd(fd):
    return quantize_decoder(fd, 32)


# -- npz archives written a member at a time ---------------------------------------------------

def test_npz_written_a_member_at_a_time_maps_back(tmp_path):
    """NpzWriter in sorted order writes write_npz's bytes (deterministic: fixed timestamps);
    npz_memmap maps a stored member back, equal to what np.load reads."""
    from hwflow.compiler.decoder_io import NpzWriter, npz_memmap, write_npz

    arrays = {"layers.0.q": np.arange(12, dtype=np.float32).reshape(3, 4),
              "embed": np.linspace(-1, 1, 35).reshape(7, 5).astype(np.float32),
              "codes": np.arange(-5, 5, dtype=np.int8), "empty": np.zeros((0, 3))}
    write_npz(tmp_path / "a.npz", arrays)
    with NpzWriter(tmp_path / "b.npz") as npz:
        for k in sorted(arrays):
            npz.add(k, arrays[k])
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    with np.load(tmp_path / "a.npz") as z:
        for k, a in arrays.items():
            m = npz_memmap(tmp_path / "a.npz", k)
            assert m.dtype == a.dtype and m.shape == a.shape
            np.testing.assert_array_equal(m, z[k])


# -- the decoders ------------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["qd", "fd"])
def test_saved_decoder_loads_back_equal_and_reproducible(tmp_path, request, which):
    """Every array, tuple and number (in order) comes back; saving twice gives the same bytes
    (the build folder's digests depend on it)."""
    d = request.getfixturevalue(which)
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        dio.save_decoder(d, tmp_path / run / "dec")
    for suffix in (".npz", ".json"):
        assert ((tmp_path / "a" / "dec").with_suffix(suffix).read_bytes()
                == (tmp_path / "b" / "dec").with_suffix(suffix).read_bytes())
    back = dio.load_saved_decoder(tmp_path / "a" / "dec")
    assert type(back) is (QDecoder if which == "qd" else FloatDecoder)
    _same(back, d, which)


def test_float_writer_writes_the_whole_decoders_archive(tmp_path, fd):
    """A layer at a time, the archive write_npz makes of the whole decoder (two layers: sorted
    order and layer order agree)."""
    arrays, meta = {}, {}
    dio._flatten(fd, "", arrays, meta)
    dio.write_npz(tmp_path / "whole.npz", arrays)
    with dio.FloatDecoderWriter(tmp_path / "dec", fd) as w:
        for i in range(len(fd.layers)):
            w.add(i, fd.layers[i])
    assert (tmp_path / "dec.npz").read_bytes() == (tmp_path / "whole.npz").read_bytes()
    with pytest.raises(AssertionError, match="layer 1 after 0 layers"), \
            dio.FloatDecoderWriter(tmp_path / "other", fd) as w:
        w.add(1, fd.layers[1])                          # out of order: refused


def test_a_failed_writer_leaves_no_json(tmp_path, fd):
    with pytest.raises(RuntimeError), dio.FloatDecoderWriter(tmp_path / "dec", fd) as w:
        w.add(0, fd.layers[0])
        raise RuntimeError("the compile failed")
    assert not (tmp_path / "dec.json").exists()


def test_open_saved_decoder_reads_a_layer_when_indexed(tmp_path, fd, qd):
    dio.save_decoder(fd, tmp_path / "float")
    opened = dio.open_saved_decoder(tmp_path / "float")
    assert isinstance(opened.layers, LazyLayers) and len(opened.layers) == len(fd.layers)
    assert isinstance(opened.embed, np.memmap)          # mapped, not read
    _same(dataclasses.replace(opened, layers=list(opened.layers)),
          dio.load_saved_decoder(tmp_path / "float"), "fd")
    dio.save_decoder(qd, tmp_path / "quantized")
    with pytest.raises(ValueError, match="not a float decoder"):
        dio.open_saved_decoder(tmp_path / "quantized")


# -- the Mamba models --------------------------------------------------------------------------

def test_saved_mamba_loads_back_equal(tmp_path):
    """A FloatMamba and a QMamba (int4, rotated: nested tuples, a None, the layer classes
    named in the file) come back field for field, and the integer model computes the same
    logits; saving twice gives the same bytes."""
    from hwflow.compiler.ssm import FloatMamba
    from hwflow.compiler.ssm_quant import QMamba, qmamba_logits, quantize_mamba

    from .test_ssm_interpret import _float_mamba, _tiny_mamba

    fm = _float_mamba(_tiny_mamba(0))
    qm = quantize_mamba(fm, wbits=4)
    for name, m in (("f", fm), ("q", qm)):
        for run in ("a", "b"):
            dio.save_decoder(m, tmp_path / f"{name}{run}")
        for suffix in (".npz", ".json"):
            assert ((tmp_path / f"{name}a").with_suffix(suffix).read_bytes()
                    == (tmp_path / f"{name}b").with_suffix(suffix).read_bytes())
    f2, q2 = (dio.load_saved_decoder(tmp_path / f"{n}a") for n in ("f", "q"))
    assert type(f2) is FloatMamba and type(q2) is QMamba and q2.shape == qm.shape
    for a, b in ((fm, f2), (qm, q2)):
        for ly, ly2 in zip(a.layers, b.layers, strict=True):
            assert type(ly2) is type(ly)
            for f in dataclasses.fields(ly):
                x, y = getattr(ly, f.name), getattr(ly2, f.name)
                if isinstance(x, np.ndarray):
                    np.testing.assert_array_equal(x, y)
                elif not dataclasses.is_dataclass(x):
                    assert x == y and type(x) is type(y), f.name
    ids = [3, 96, 41, 0, 17]
    np.testing.assert_array_equal(qmamba_logits(q2, ids), qmamba_logits(qm, ids))
