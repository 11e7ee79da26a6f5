"""Saving the language-model IRs without pickles: a FloatDecoder or QDecoder
(:mod:`hwflow.compiler.decoder`), a FloatMamba (:mod:`hwflow.compiler.ssm`) or QMamba
(:mod:`hwflow.compiler.ssm_quant`) as ``NAME.npz`` (its arrays) + ``NAME.json`` (everything
else), read back with ``allow_pickle=False``.

The format flattens the dataclasses: an array field is an archive member named by its dotted
path (``layers.3.q.w``), any other field a JSON entry under that path (tuples as lists), a
nested dataclass ``{"class": NAME}`` with its fields under ``path.``, a list of layers
``{"list": N, "class": NAME}`` with its items under ``path.i.``; ``__class__`` names the
model class. Only the classes of :data:`_CLASSES` are built when read (files written before
the class entries: the decoder's classes by field name). The same decoder gives the same bytes:
the archive's members are stored, sorted, with fixed timestamps (:func:`write_npz`), so a
build folder's digests do not change between two compiles of one model.

A float decoder is written a layer at a time (:class:`FloatDecoderWriter`, as the compile
reads its blocks) and read a layer at a time (:func:`open_saved_decoder`): the float decoder
of a 1.24 B-parameter model is 6.0 GB.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from . import decoder as dec
from . import ssm
from . import ssm_quant as sq
from .spec import check_decoder

__all__ = ["save_decoder", "load_saved_decoder", "open_saved_decoder", "FloatDecoderWriter",
           "write_npz", "NpzWriter", "npz_memmap"]


# -- npz archives written a member at a time -------------------------------------------------

def write_npz(path: Path, arrays: dict) -> None:
    """``np.savez`` with fixed zip timestamps (1980-01-01) and sorted members.

    The same arrays give the same bytes (``ZipFile.open`` stamps the current time on some
    Python versions). :class:`NpzWriter` writes the members one at a time.

    Parameters
    ----------
    path : pathlib.Path
        The archive to write (replaced if it exists).
    arrays : dict of str to numpy.ndarray
        Member name (without ``.npy``) to array.
    """
    with NpzWriter(path) as npz:
        for key in sorted(arrays):
            npz.add(key, arrays[key])


class NpzWriter:
    """An ``.npz`` written one array at a time, in the order given (a context manager):
    :func:`write_npz`'s archive (stored members, fixed timestamps: the same arrays in the same
    order give the same bytes) without holding every array at once.

    Streams each array into the file: the float decoder of a 1.24 B-parameter model is 6.0 GB,
    and assembling the archive in memory first took twice that on top of the arrays (the
    buffer and its ``getvalue`` copy). The bytes are those ``ZipFile.writestr`` of the whole
    ``.npy`` gives: the same member header, sized up front (which decides zip64 the same way).
    The members are stored, not compressed, so :func:`npz_memmap` can map one of them.
    """

    def __init__(self, path: Path):
        import zipfile

        self._zf = zipfile.ZipFile(path, "w", zipfile.ZIP_STORED)

    def add(self, key: str, array) -> None:
        """Member ``key.npy``: ``array`` (C order, no pickles)."""
        import io
        import zipfile

        a = np.ascontiguousarray(array)
        info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
        info.compress_type = zipfile.ZIP_STORED
        head = io.BytesIO()     # write_array's own header: version 1.0 where it fits
        try:
            np.lib.format.write_array_header_1_0(head, np.lib.format.header_data_from_array_1_0(a))
        except ValueError:
            np.lib.format.write_array_header_2_0(head, np.lib.format.header_data_from_array_1_0(a))
        info.file_size = head.tell() + a.nbytes
        with self._zf.open(info, "w") as dest:
            np.lib.format.write_array(dest, a, allow_pickle=False)

    def close(self) -> None:
        """Write the zip directory and close the file."""
        self._zf.close()

    def __enter__(self) -> NpzWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def npz_memmap(path: Path, key: str):
    """Array ``key`` of an ``.npz`` of stored members (:class:`NpzWriter`'s) as a read-only
    memory map: only the pages read come into memory (a few embedding rows of a 1 GB table).

    Parameters
    ----------
    path : pathlib.Path
        The archive.
    key : str
        The member's name, without ``.npy``.

    Returns
    -------
    numpy.memmap or numpy.ndarray
        The member, mapped read-only (an empty array when it has no elements: nothing to map).

    Raises
    ------
    ValueError
        The member is compressed.
    """
    import struct
    import zipfile

    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(key + ".npy")
    if info.compress_type != zipfile.ZIP_STORED:
        raise ValueError(f"{path}: member {key} is compressed; only stored members map")
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)          # the local file header: its own name and extra lengths
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        f.seek(info.header_offset + 30 + name_len + extra_len)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                       (2, 0): np.lib.format.read_array_header_2_0}[np.lib.format.read_magic(f)]
        shape, fortran, dtype = read_header(f)
        offset = f.tell()
    if not int(np.prod(shape)):     # nothing to map
        return np.empty(shape, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape,
                     order="F" if fortran else "C")


# -- the decoder dataclasses, flattened -------------------------------------------------------

#: The classes a saved model is built of, by name (nothing else is built from a file).
_CLASSES = {c.__name__: c for c in (
    dec.FloatDecoder, dec.QDecoder, dec.FloatLayer, dec.QLayer, dec.DecoderShape, dec.QLinear,
    ssm.FloatMamba, ssm.FloatMambaLayer, ssm.FloatMamba2Layer, ssm.SsmShape,
    sq.QMamba, sq.QMambaLayer, sq.QMamba2Layer)}


def _flatten(obj, prefix: str, arrays: dict, meta: dict) -> None:
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        key = f"{prefix}{f.name}"
        if isinstance(v, np.ndarray):
            arrays[key] = v
        elif dataclasses.is_dataclass(v):
            meta[key] = {"class": type(v).__name__}
            _flatten(v, key + ".", arrays, meta)
        elif isinstance(v, list) and v and dataclasses.is_dataclass(v[0]):
            meta[key] = {"list": len(v), "class": type(v[0]).__name__}
            for i, item in enumerate(v):
                _flatten(item, f"{key}.{i}.", arrays, meta)
        else:
            meta[key] = list(v) if isinstance(v, tuple) else v


def _build(cls, prefix: str, arrays, meta):
    kw = {}
    hints = {f.name: f for f in dataclasses.fields(cls)}
    for name in hints:
        key = f"{prefix}{name}"
        entry = meta.get(key)
        if key in arrays:
            kw[name] = arrays[key]
        elif isinstance(entry, dict) and "list" in entry:
            item_cls = _CLASSES[entry["class"]] if "class" in entry else \
                {"layers": dec.QLayer if cls is dec.QDecoder else dec.FloatLayer}[name]
            kw[name] = [_build(item_cls, f"{key}.{i}.", arrays, meta)
                        for i in range(meta[key]["list"])]
        elif isinstance(entry, dict) and "class" in entry:
            kw[name] = _build(_CLASSES[entry["class"]], key + ".", arrays, meta)
        elif key in meta:
            kw[name] = _tuple(entry)
        elif name == "shape":
            kw[name] = _build(dec.DecoderShape, key + ".", arrays, meta)
        elif any(k.startswith(key + ".") for k in arrays):
            kw[name] = _build(dec.QLinear, key + ".", arrays, meta)
    return cls(**kw)


def _tuple(v):
    """A JSON entry as the field held it: lists (tuples when written) as tuples, nested too."""
    return tuple(_tuple(x) for x in v) if isinstance(v, list) else v


# -- saving and loading -----------------------------------------------------------------------

def save_decoder(obj, path: Path) -> None:
    """Write a FloatDecoder, QDecoder, FloatMamba or QMamba as ``path.npz`` (arrays) +
    ``path.json`` (the rest).

    The same decoder gives the same bytes (:func:`write_npz`: fixed zip timestamps). A float
    decoder is written a layer at a time (:class:`FloatDecoderWriter`).

    Parameters
    ----------
    obj : FloatDecoder, QDecoder, FloatMamba or QMamba
        The model.
    path : pathlib.Path
        The files' common name; its suffix is replaced by ``.npz`` and ``.json``.
    """
    if isinstance(obj, dec.FloatDecoder):
        with FloatDecoderWriter(path, obj) as w:
            for i, ly in enumerate(obj.layers):
                w.add(i, ly)
        return
    arrays, meta = {}, {}
    _flatten(obj, "", arrays, meta)
    meta["__class__"] = type(obj).__name__
    write_npz(path.with_suffix(".npz"), arrays)
    path.with_suffix(".json").write_text(json.dumps(meta, indent=1, default=float) + "\n")


class FloatDecoderWriter:
    """:func:`save_decoder` of a FloatDecoder whose layers come one at a time (a context
    manager; ``add(i, layer)`` in layer order, as the compile reads them): the arrays outside
    the layers that sort before them (``embed``) are written when it opens, each layer's
    arrays (sorted by name) when it is added, the rest (``lm_head``) and ``path.json`` when it
    closes, so no layer is held. The archive is the one ``write_npz`` writes of the whole
    decoder for up to ten layers; past that its layers are in layer order (``layers.2`` before
    ``layers.10``), not sorted.

    Parameters
    ----------
    path : pathlib.Path
        As :func:`save_decoder`'s.
    fd : FloatDecoder
        The decoder; its ``layers`` are not read (they come through :meth:`add`).
    """

    def __init__(self, path: Path, fd):
        self.path = path
        self.npz = NpzWriter(path.with_suffix(".npz"))
        self.meta: dict = {}
        self.layer_meta: dict = {}
        self.layers = 0
        top: dict = {}
        _flatten(dataclasses.replace(fd, layers=[]), "", top, self.meta)
        self.tail = {k: top[k] for k in sorted(top) if k > "layers."}
        for k in sorted(top):
            if k < "layers.":
                self.npz.add(k, top[k])

    def add(self, i: int, layer) -> None:
        """Layer ``i`` (the next one)."""
        assert i == self.layers, f"layer {i} after {self.layers} layers"
        arrays: dict = {}
        _flatten(layer, f"layers.{i}.", arrays, self.layer_meta)
        for k in sorted(arrays):
            self.npz.add(k, arrays[k])
        self.layers += 1

    def __enter__(self) -> FloatDecoderWriter:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is not None:        # a failed compile: its staging folder goes
            self.npz.close()
            return
        for k, v in self.tail.items():
            self.npz.add(k, v)
        self.tail = {}          # the LM head (1 GB in float32 for Llama-3.2-1B) is written
        self.npz.close()
        meta = {}
        for k, v in self.meta.items():      # the layers' entries where _flatten puts them
            if k == "layers":
                meta[k] = {"list": self.layers}
                meta.update(self.layer_meta)
            else:
                meta[k] = v
        meta["__class__"] = "FloatDecoder"
        self.path.with_suffix(".json").write_text(json.dumps(meta, indent=1, default=float)
                                                  + "\n")


def load_saved_decoder(path: Path):
    """Inverse of :func:`save_decoder` (``allow_pickle=False``).

    Parameters
    ----------
    path : pathlib.Path
        As given to :func:`save_decoder`.

    Returns
    -------
    FloatDecoder, QDecoder, FloatMamba or QMamba
        The model, every array in memory.

    Raises
    ------
    SpecError
        A quantized decoder that breaks a rule of the decoder IR
        (:func:`hwflow.compiler.spec.check_decoder`).
    """
    meta = json.loads(path.with_suffix(".json").read_text())
    with np.load(path.with_suffix(".npz"), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    cls = _CLASSES[meta.pop("__class__")]
    obj = _build(cls, "", arrays, meta)
    return check_decoder(dec.freeze_decoder(obj)) if cls is dec.QDecoder else obj


def open_saved_decoder(path: Path):
    """A float decoder written by :func:`save_decoder`, read as it is used.

    The embedding and the LM head are memory-mapped (only the pages read come into memory),
    layer ``i`` is read when ``layers[i]`` is (:class:`_SavedLayers`). The same arrays as
    :func:`load_saved_decoder`'s.

    Parameters
    ----------
    path : pathlib.Path
        As given to :func:`save_decoder`.

    Returns
    -------
    FloatDecoder
        Its ``layers`` a :class:`hwflow.compiler.decoder.LazyLayers`.

    Raises
    ------
    ValueError
        ``path`` holds a quantized decoder.
    """
    meta = json.loads(path.with_suffix(".json").read_text())
    if meta.pop("__class__") != "FloatDecoder":
        raise ValueError(f"{path}: not a float decoder")
    npz = path.with_suffix(".npz")
    with np.load(npz, allow_pickle=False) as z:
        top = {k: npz_memmap(npz, k) for k in z.files if not k.startswith("layers.")}
    fd = _build(dec.FloatDecoder, "", top, {**meta, "layers": []})
    return dataclasses.replace(fd, layers=_SavedLayers(npz, meta))


class _SavedLayers(dec.LazyLayers):
    """The layers of a saved float decoder, layer ``i`` read from the archive when indexed."""

    def __init__(self, npz: Path, meta: dict):
        self.npz, self.meta, self.n = npz, meta, int(meta["layers"]["list"])

    def layer(self, i: int):
        prefix = f"layers.{i}."
        with np.load(self.npz, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files if k.startswith(prefix)}
        return _build(dec.FloatLayer, prefix, arrays, self.meta)
