"""Read a ``torch.export.save`` archive without running anything stored in it.

``torch.export.load`` unpickles archive members with full pickle: the sample inputs (after its
``weights_only=True`` attempt fails), every weight or constant marked ``use_pickle``, custom
and opaque object constants, and the legacy (PyTorch <= 2.6) weight files. A crafted archive
therefore runs arbitrary code as it is loaded. Its graph can also name any callable reachable
from ``torch`` as a node target (``torch.os.system`` resolves), and its ``guards_code`` is
Python source that ``ExportedProgram.module()`` compiles and runs.

This reader takes only data from the archive:

* the graph JSON (``models/model.json``), after checking that every node target and operator
  argument is an ATen/prims operator, a known higher-order wrapper or a pure symbolic helper;
  that no argument is a custom (TorchScript) object; and that no tree spec imports a module;
* weights and constants stored as raw tensor bytes (``use_pickle: false``), checked against
  their declared dtype, sizes and strides;

and refuses, naming the member, everything that would need unpickling (pickled tensors,
custom/opaque objects, legacy weight files). The sample inputs are never read (the compiler
does not need them) and the guards code is dropped (hwflow calls the module only with inputs
it made itself). ``trust_model=True`` hands the file to ``torch.export.load`` as it is.
"""

from __future__ import annotations

import json
import os
import re
import sys
import zipfile
from pathlib import Path

import torch

from .errors import FrontendError

MODEL_JSON = "models/model.json"
WEIGHTS_CONFIG = "data/weights/model_weights_config.json"
CONSTANTS_CONFIG = "data/constants/model_constants_config.json"
LEGACY_WEIGHTS = ("data/weights/model.pt", "data/constants/model.pt")
LEGACY_PROGRAM = "serialized_exported_program.json"

# Node targets an untrusted graph may name. ATen and prims operators are C++ kernels with
# schemas; the higher-order wrappers below only call sub-graphs of the same archive (which are
# checked too); the Python helpers are the pure arithmetic torch.export emits for symbolic
# shapes. Anything else (a Python function reached through ``torch.*``, an extension op ``#``)
# could run arbitrary code when the graph is traced or called.
_OPERATOR = re.compile(r"^torch\.ops\.(aten|prims)\.[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)?$")
_HIGHER_ORDER = {"wrap_with_set_grad_enabled", "wrap_with_autocast"}
_PURE_PYTHON = {f"_operator.{n}" for n in (
    "getitem", "add", "sub", "mul", "floordiv", "truediv", "mod", "pow", "neg", "pos", "abs",
    "eq", "ne", "lt", "le", "gt", "ge", "and_", "or_", "xor", "not_", "invert")} | {
    f"torch.{n}" for n in ("sym_int", "sym_float", "sym_max", "sym_min", "sym_not", "sym_ite",
                           "sym_sqrt", "sym_sum", "_sym_sqrt")} | {
    f"math.{n}" for n in ("ceil", "floor", "trunc", "sqrt")}

# Bytes of all archive members together, uncompressed, that a model may declare: a zip whose
# directory claims more than half of this machine's memory is refused before anything is
# inflated (a small file can declare terabytes).
_MEMORY_SHARE = 0.5


def is_allowed_target(target: str) -> bool:
    """Whether an untrusted graph may call ``target`` (a serialized node target string)."""
    if _OPERATOR.match(target) or target in _PURE_PYTHON:
        return True
    m = re.match(r"^torch\.ops\.higher_order\.([A-Za-z_]+)$", target)
    return bool(m) and m.group(1) in _HIGHER_ORDER


def load_exported_program(path: str | os.PathLike, trust_model: bool = False):
    """Load a ``torch.export.save`` archive as an ``ExportedProgram``.

    Parameters
    ----------
    path : path-like
        The archive.
    trust_model : bool
        Load it with ``torch.export.load``, which unpickles members (runs code stored in the
        file). Without it nothing in the archive is executed (see the module docstring).

    Returns
    -------
    torch.export.ExportedProgram
        Without trust: no ``example_inputs`` and no guards code.

    Raises
    ------
    FrontendError
        Unreadable or damaged archive, a member that would have to be unpickled, a graph that
        calls something other than an operator, a tensor whose bytes do not match its metadata,
        or more declared bytes than this machine can hold; the message names the member.
    """
    path = Path(path)
    _register_output_types()
    if trust_model:
        return _load_trusted(path)
    try:
        with zipfile.ZipFile(path) as zf:
            return _load_untrusted(path, _Archive(path, zf))
    except zipfile.BadZipFile as e:
        raise FrontendError(f"{path}: damaged torch.export archive ({_first_line(e)})") from None
    except (OSError, EOFError, zipfile.LargeZipFile) as e:
        raise FrontendError(f"{path}: cannot read the torch.export archive "
                            f"({type(e).__name__}: {_first_line(e)})") from None


def _register_output_types() -> None:
    """A Hugging Face model's exported output spec names ``transformers.modeling_outputs``
    classes, which must be registered pytree nodes before the spec is read."""
    try:
        import transformers.modeling_outputs  # noqa: F401
    except ImportError:
        pass


def _load_trusted(path: Path):
    try:
        return torch.export.load(str(path))
    except Exception as e:  # noqa: BLE001 -- any failure is "cannot read this archive"
        raise FrontendError(f"{path}: cannot read the torch.export archive "
                            f"({type(e).__name__}: {_first_line(e)})") from None


class _Archive:
    """The members of a pt2 zip, addressed without the archive's top folder name."""

    def __init__(self, path: Path, zf: zipfile.ZipFile):
        self.path, self.zf = path, zf
        infos = zf.infolist()
        tops = {i.filename.split("/", 1)[0] for i in infos}
        self.prefix = (tops.pop() + "/") if len(tops) == 1 and all(
            "/" in i.filename for i in infos) else ""
        self.members = {i.filename[len(self.prefix):]: i for i in infos
                        if i.filename.startswith(self.prefix) and not i.is_dir()}
        declared = sum(i.file_size for i in infos)
        limit = machine_memory_bytes() * _MEMORY_SHARE
        if declared > limit:
            big = max(infos, key=lambda i: i.file_size)
            raise FrontendError(
                f"{path}: the archive declares {declared / 2**30:.1f} GiB of members (largest "
                f"'{big.filename}', {big.file_size / 2**30:.1f} GiB), more than half of this "
                f"machine's memory ({limit / 2**30:.1f} GiB allowed); not loading it")

    def has(self, name: str) -> bool:
        return name in self.members

    def read(self, name: str) -> bytes:
        if name not in self.members:
            raise FrontendError(f"{self.path}: damaged torch.export archive: member '{name}' "
                                "is missing")
        try:
            return self.zf.read(self.members[name])
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
            raise FrontendError(f"{self.path}: damaged torch.export archive: member "
                                f"'{name}' cannot be read ({_first_line(e)})") from None

    def json(self, name: str):
        try:
            return json.loads(self.read(name))
        except (ValueError, UnicodeDecodeError) as e:
            raise FrontendError(f"{self.path}: damaged torch.export archive: '{name}' is not "
                                f"valid JSON ({_first_line(e)[:80]})") from None


def _load_untrusted(path: Path, ar: _Archive):
    from torch._export.serde import schema
    from torch._export.serde.serialize import ExportedProgramDeserializer, _dict_to_dataclass

    if ar.has(LEGACY_PROGRAM):
        raise FrontendError(
            f"{path} is a torch.export archive of the old format (PyTorch 2.6 and earlier), "
            "whose weights are pickles: loading it would execute code stored in the file; "
            "re-save it with torch.export.save, or pass --trust-model if you trust it")
    if not ar.has(MODEL_JSON):
        raise FrontendError(f"{path}: not a torch.export archive hwflow can read (no "
                            f"'{MODEL_JSON}'; save the model with torch.export.save)")
    _check_byteorder(ar)
    program = ar.json(MODEL_JSON)
    _check_program(path, program)
    for legacy in LEGACY_WEIGHTS:
        if ar.has(legacy):
            raise _pickle_refusal(path, f"member '{legacy}' (weights in the legacy pickle "
                                  "format)")
    state_dict = _read_tensors(ar, WEIGHTS_CONFIG, "data/weights/", "weight")
    constants = _read_tensors(ar, CONSTANTS_CONFIG, "data/constants/", "constant")
    program.setdefault("guards_code", [])
    program["guards_code"] = []          # Python source run by ExportedProgram.module()
    try:
        serialized = _dict_to_dataclass(schema.ExportedProgram, program)
        return ExportedProgramDeserializer().deserialize(serialized, state_dict, constants,
                                                         None)
    except Exception as e:  # noqa: BLE001 -- the deserializer raises many kinds on bad JSON
        raise FrontendError(f"{path}: '{MODEL_JSON}' is not a valid exported program of this "
                            f"PyTorch {torch.__version__} ({type(e).__name__}: "
                            f"{_first_line(e)[:120]})") from None


def _pickle_refusal(path: Path, what: str) -> FrontendError:
    return FrontendError(f"{path}: {what} would have to be unpickled, which executes code "
                         "stored in the file; re-save the model with torch.export.save from "
                         "plain tensors, or pass --trust-model if you trust the file")


def _check_byteorder(ar: _Archive) -> None:
    if ar.has("byteorder"):
        order = ar.read("byteorder").decode("ascii", "replace").strip()
        if order != sys.byteorder:
            raise FrontendError(f"{ar.path}: the archive's tensors are {order}-endian, this "
                                f"machine is {sys.byteorder}-endian")


# ------------------------------------------------------------------------------ the graph

def _check_program(path: Path, program) -> None:
    """Refuse a graph that could run code: non-operator targets, custom objects, tree specs
    that import modules."""
    if not isinstance(program, dict) or not isinstance(program.get("graph_module"), dict):
        raise FrontendError(f"{path}: '{MODEL_JSON}' is not an exported program")
    for kind, value, where in _walk(program["graph_module"], "graph"):
        if kind == "target" and not is_allowed_target(value):
            raise FrontendError(
                f"{path}: node '{where}' calls '{value}', which is not an ATen operator; an "
                "untrusted archive may only call operators (pass --trust-model if you trust "
                "the file)")
        if kind == "custom_obj":
            raise _pickle_refusal(path, f"the custom object argument of node '{where}'")
        if kind == "spec" and ("default_factory_module" in value or "__enum__" in value):
            raise FrontendError(f"{path}: a tree spec of '{where}' names a Python module to "
                                "import; pass --trust-model if you trust the file")


def _walk(obj, where: str):
    """Yield ``(kind, value, where)`` for node targets, operator arguments, custom-object
    arguments and tree specs anywhere in a serialized graph module (sub-graphs included)."""
    if isinstance(obj, dict):
        if isinstance(obj.get("target"), str) and "inputs" in obj:
            where = str(obj.get("name") or _first_output(obj) or where)
            yield "target", obj["target"], where
        for key, value in obj.items():
            if key == "as_operator" and isinstance(value, str):
                yield "target", value, where
            elif key == "as_custom_obj":
                yield "custom_obj", value, where
            elif key in ("in_spec", "out_spec") and isinstance(value, str):
                yield "spec", value, where
            else:
                yield from _walk(value, where)
    elif isinstance(obj, list):
        for value in obj:
            yield from _walk(value, where)


def _first_output(node: dict):
    outs = node.get("outputs") or []
    if outs and isinstance(outs[0], dict):
        t = outs[0].get("as_tensor")
        return t.get("name") if isinstance(t, dict) else None
    return None


# ---------------------------------------------------------------------------- the tensors

def _read_tensors(ar: _Archive, config_name: str, folder: str, what: str) -> dict:
    """``fqn -> tensor`` of a weights or constants config, raw bytes only."""
    from torch._export.serde import schema
    from torch._export.serde.serialize import (
        _dict_to_dataclass,
        deserialize_scalar_type,
        deserialize_size,
        deserialize_storage_offset,
        deserialize_stride,
    )

    if not ar.has(config_name):
        return {}
    config = ar.json(config_name)
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise FrontendError(f"{ar.path}: damaged torch.export archive: '{config_name}' has no "
                            "'config' table")
    files: dict[tuple, torch.Tensor] = {}
    out = {}
    for fqn, meta in entries.items():
        if not isinstance(meta, dict) or not isinstance(meta.get("path_name"), str):
            raise FrontendError(f"{ar.path}: damaged torch.export archive: {what} '{fqn}' in "
                                f"'{config_name}' has no path_name")
        name = meta["path_name"]
        if meta.get("use_pickle") or not name.startswith(("weight_", "tensor_")):
            kind = ("a pickled tensor" if meta.get("use_pickle") else
                    "a custom object" if name.startswith("custom_obj_") else
                    "an opaque Python object" if name.startswith("opaque_obj_") else
                    f"an unknown payload '{name}'")
            raise _pickle_refusal(ar.path, f"{what} '{fqn}' ({kind}, member '{folder}{name}')")
        try:
            tm = _dict_to_dataclass(schema.TensorMeta, meta.get("tensor_meta"))
            dtype = deserialize_scalar_type(tm.dtype)
            sizes = deserialize_size(tm.sizes)
            strides = deserialize_stride(tm.strides)
            offset = deserialize_storage_offset(tm.storage_offset)
        except Exception as e:  # noqa: BLE001
            raise FrontendError(f"{ar.path}: damaged torch.export archive: {what} '{fqn}' has "
                                f"bad tensor metadata ({type(e).__name__})") from None
        if (name, dtype) not in files:
            files[name, dtype] = _raw_tensor(ar, folder + name, dtype)
        flat = files[name, dtype]
        extent = offset + sum((s - 1) * st for s, st in zip(sizes, strides, strict=True)) + 1 \
            if all(s > 0 for s in sizes) else 0
        if offset < 0 or any(st < 0 for st in strides) or extent > flat.numel():
            raise FrontendError(f"{ar.path}: damaged torch.export archive: {what} '{fqn}' "
                                f"declares shape {list(sizes)} but member '{folder}{name}' "
                                f"holds {flat.numel()} elements")
        t = torch.as_strided(flat, sizes, strides, offset)
        out[fqn] = torch.nn.Parameter(t, requires_grad=bool(tm.requires_grad)) \
            if meta.get("is_param") else t
    return out


def _raw_tensor(ar: _Archive, member: str, dtype: torch.dtype) -> torch.Tensor:
    data = ar.read(member)
    size = torch.empty((), dtype=dtype).element_size()
    if len(data) % size:
        raise FrontendError(f"{ar.path}: damaged torch.export archive: member '{member}' has "
                            f"{len(data)} bytes, not a whole number of {dtype} elements")
    if not data:
        return torch.empty(0, dtype=dtype)
    return torch.frombuffer(bytearray(data), dtype=dtype)


def machine_memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 16 * 2**30


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__
