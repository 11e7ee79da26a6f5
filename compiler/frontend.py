"""Frontend: a PyTorch model file to the float-level IR.

Three file formats, recognised by content (never by extension):

* ``torch.export.save`` archive (zip holding ``*/models/*.json`` or
  ``serialized_exported_program.json``): the primary path, read by
  :func:`~hwflow.compiler.export_archive.load_exported_program`, which never unpickles a
  member unless the caller trusts the file;
* TorchScript archive (zip holding ``*/code/`` and ``*/constants.pkl``): read with
  ``torch.jit.load`` and lowered from its inlined graph; the input is ``[rows, in_features]``
  of the first linear layer;
* a whole ``nn.Module`` pickled with ``torch.save``: loading it runs pickled code, so it is
  refused unless the caller trusts the file; with trust it is loaded and ``torch.export``-ed
  with an example input of ``rows`` rows.

Supported ATen ops: ``linear`` (also ``addmm``/``mm`` with a transposed constant weight),
``relu``, ``add.Tensor`` (alpha 1), and the layout glue ``view``/``reshape``/``flatten``/
``_unsafe_view`` (a ``reshape`` node) and ``clone``/``contiguous``/``alias``/``detach``/
``dropout`` in eval mode (dropped). Anything else raises :class:`UnsupportedOpError` naming the
op, the graph node and the source line.
"""

from __future__ import annotations

import math
import os
import pickle
import re
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from .errors import FrontendError, UnsupportedOpError
from .export_archive import load_exported_program
from .ir import Graph, add_op, new_graph, op_of, replace_uses, set_op, unique_name
from .ops import Op, TensorType
from .spec import check

DEFAULT_ROWS = 4
#: Elements per block of :func:`check_finite`.
_FINITE_BLOCK = 2**22

_RESHAPES = {"view", "reshape", "flatten", "_unsafe_view"}
_IDENTITIES = {"clone", "contiguous", "alias", "detach", "lift_fresh_copy"}
_TRANSPOSES = {"t", "permute", "transpose", "numpy_T"}


# --------------------------------------------------------------------------------- detection

def detect_format(path: Path) -> str:
    """'export', 'torchscript', 'pickle' (a torch.save file) or 'unknown', by file content."""
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError):
            return "unknown"
        if any(re.search(r"(^|/)models/[^/]+\.json$", n) for n in names) or any(
                n.endswith("serialized_exported_program.json") for n in names):
            return "export"
        if any("/code/" in n or n.startswith("code/") for n in names) and any(
                n.endswith("constants.pkl") for n in names):
            return "torchscript"
        if any(n.endswith("data.pkl") for n in names):
            return "pickle"
        return "unknown"
    with open(path, "rb") as f:
        head = f.read(2)
    # Legacy (pre-zip) torch.save files start with a pickle protocol header 0x80 <proto>.
    return "pickle" if len(head) == 2 and head[0] == 0x80 and head[1] <= 5 else "unknown"


def _load_pickle_safely(path: Path):
    """torch.load with weights_only=True: returns the object, or None if it needs code to run."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        return None  # an unsupported global: the file holds pickled classes (a whole module)
    except Exception as e:  # noqa: BLE001 -- any other failure means "not a readable file"
        raise FrontendError(f"{path}: not a readable PyTorch file ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''})") from None


def load_model(path: str | os.PathLike, trust_model: bool = False,
               rows: int | None = None) -> Graph:
    """Load a PyTorch model file as a float-level IR graph.

    Parameters
    ----------
    path : path-like
        A ``torch.export.save`` archive, a TorchScript archive, or (with ``trust_model``) a
        pickled ``nn.Module`` saved with ``torch.save``.
    trust_model : bool
        Allow unpickling a whole module, which executes code stored in the file.
    rows : int, optional
        Rows (batch x tokens) of the example input for TorchScript and pickled modules, whose
        files do not record an input shape; default 4. Dynamic dims of an exported program
        also take this value.

    Returns
    -------
    networkx.DiGraph
        Float-level IR (passes the spec check); ``graph.graph['name']`` is the file stem.

    Raises
    ------
    FrontendError
        Missing, unreadable, untrusted or non-model file (e.g. a bare state_dict).
    UnsupportedOpError
        The model uses an op outside the supported set.
    """
    path = Path(path)
    rows = DEFAULT_ROWS if rows is None else int(rows)
    if rows < 1:
        raise FrontendError(f"rows must be >= 1, got {rows}")
    if not path.exists():
        raise FrontendError(f"{path}: no such file")
    if not path.is_file():
        raise FrontendError(f"{path}: not a file")
    name = re.sub(r"\W", "_", path.stem) or "model"
    fmt = detect_format(path)
    if fmt == "export":
        return from_exported_program(load_exported_program(path, trust_model), name, rows)
    if fmt == "torchscript":
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except Exception as e:  # noqa: BLE001
            raise FrontendError(f"{path}: cannot read the TorchScript archive "
                                f"({type(e).__name__}: {_first_line(e)})") from None
        return from_torchscript(module, name, rows)
    if fmt == "pickle":
        obj = _load_pickle_safely(path)
        if obj is None:
            if not trust_model:
                raise FrontendError(
                    f"{path} is a pickled nn.Module: loading it would execute code stored in the "
                    "file; if you trust it pass --trust-model (trust_model=True), or save the "
                    "model with torch.export.save instead")
            try:
                obj = torch.load(path, map_location="cpu", weights_only=False)
            except Exception as e:  # noqa: BLE001
                raise FrontendError(f"{path}: cannot unpickle the module ({type(e).__name__}: "
                                    f"{_first_line(e)}); is its class importable here?") from None
        if isinstance(obj, torch.nn.Module):
            return from_module(obj, name, rows)
        if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor)
                                                 for v in obj.values()):
            raise FrontendError(f"{path} holds only a state_dict (weights without the model "
                                "structure); save the model with torch.export.save instead")
        raise FrontendError(f"{path} holds a {type(obj).__name__}, not a model; save the model "
                            "with torch.export.save")
    raise FrontendError(f"{path} is not a PyTorch model file (expected a torch.export.save "
                        "archive, a TorchScript archive or a torch.save'd nn.Module)")


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else ""


def from_module(module: torch.nn.Module, name: str = "model", rows: int = DEFAULT_ROWS,
                example: torch.Tensor | None = None) -> Graph:
    """Export an in-memory ``nn.Module`` (eval mode) and lower it to the float IR.

    The example input is ``example`` if given, else ``rows`` x the first linear's in_features.
    """
    module = module.eval()
    if example is None:
        first = next((m for m in module.modules() if isinstance(m, torch.nn.Linear)), None)
        if first is None:
            raise FrontendError(f"model '{name}' has no nn.Linear to take the input width from; "
                                "export it with torch.export.save and an example input")
        example = torch.randn(rows, first.in_features)
    try:
        ep = torch.export.export(module, (example,))
    except Exception as e:  # noqa: BLE001
        raise FrontendError(f"torch.export failed on model '{name}' ({type(e).__name__}: "
                            f"{_first_line(e)})") from None
    return from_exported_program(ep, name, rows)


# ----------------------------------------------------------------------------- shared builder

class _Builder:
    """Builds the float IR; values are IR node names (tensors) or numpy arrays (constants)."""

    def __init__(self, name: str):
        self.g = new_graph(name)

    def shape(self, v) -> tuple[int, ...]:
        return v.shape if isinstance(v, np.ndarray) else self.g.nodes[v]["op"].out.shape

    def node(self, base: str, kind: str, inputs, shape, attrs=None, source=None) -> str:
        name = unique_name(self.g, re.sub(r"\W", "_", base))
        add_op(self.g, name, Op(kind, tuple(inputs), TensorType(tuple(shape), "f32"),
                                attrs or {}, source=source))
        return name

    def input(self, base: str, shape) -> str:
        name = self.node(base, "input", (), shape)
        self.g.graph["inputs"].append(name)
        return name

    def output(self, value, base: str) -> None:
        if isinstance(value, np.ndarray):
            raise FrontendError("a model output is a constant, not computed from the input")
        name = self.node(base, "output", (value,), self.shape(value))
        self.g.graph["outputs"].append(name)

    def linear(self, base, x, weight: np.ndarray, bias, source) -> str:
        w = np.asarray(weight, dtype=np.float32)
        b = None if bias is None else np.asarray(bias, dtype=np.float32).reshape(-1)
        shape = self.shape(x)[:-1] + (w.shape[0],)
        return self.node(base, "linear", (x,), shape, {"weight": w, "bias": b}, source)

    def reshape(self, base, x, shape, source) -> str:
        shape = tuple(int(d) for d in shape)
        if shape == self.shape(x):
            return x
        return self.node(base, "reshape", (x,), shape, source=source)


def _reshape_target(in_shape, sizes) -> tuple[int, ...]:
    sizes = [int(s) for s in sizes]
    if sizes.count(-1) == 1:
        known = math.prod(s for s in sizes if s != -1)
        sizes[sizes.index(-1)] = math.prod(in_shape) // max(known, 1)
    return tuple(sizes)


def _flatten_target(in_shape, start=0, end=-1) -> tuple[int, ...]:
    n = len(in_shape)
    start, end = start % n if n else 0, end % n if n else 0
    return tuple(in_shape[:start]) + (math.prod(in_shape[start:end + 1]),) + tuple(
        in_shape[end + 1:])


# ---------------------------------------------------------------------------- canonicalize

def _only_user(g: Graph, name: str, user: str) -> bool:
    return list(g.successors(name)) == [user] and op_of(g, user).inputs.count(name) == 1


def canonicalize(graph: Graph) -> Graph:
    """Remove layout glue that decomposed ATen graphs add around matmuls (in place).

    A reshape of the graph input (flatten of an image-like input) becomes the input's shape:
    the host applies it before quantizing (``input`` keeps the original as ``host_shape``).

    ``torch.export`` decompositions turn a linear on ``[B, S, K]`` into
    ``view -> addmm -> view``; such reshapes keep the last dim, so ``linear``/``relu`` commute
    with them. Sinking them below the compute op lets chains of reshapes cancel, which keeps
    ReLU and residual adds adjacent to their matmul for ``fuse``. Values are unchanged.
    """
    g = graph
    changed = True
    while changed:
        changed = False
        for name in list(g.nodes):
            if name not in g:
                continue
            op = op_of(g, name)
            if op.kind == "reshape":
                src = op.inputs[0]
                sop = op_of(g, src)
                if sop.kind == "input" and _only_user(g, src, name):
                    # A reshape of the model input (e.g. flatten) is done by the host before
                    # it quantizes and loads the input: the accelerator never repacks rows.
                    set_op(g, src, replace(sop, out=op.out,
                                           attrs={"host_shape": list(sop.out.shape)}))
                    replace_uses(g, name, src)
                    g.remove_node(name)
                    changed = True
                elif op.out.shape == sop.out.shape:
                    replace_uses(g, name, src)
                    g.remove_node(name)
                    changed = True
                elif sop.kind == "reshape" and _only_user(g, src, name):
                    set_op(g, name, replace(op, inputs=sop.inputs))
                    g.remove_node(src)
                    changed = True
            elif op.kind in ("linear", "relu"):
                r = op.inputs[0]
                rop = op_of(g, r)
                if rop.kind != "reshape" or not _only_user(g, r, name):
                    continue
                x = rop.inputs[0]
                xshape = op_of(g, x).out.shape
                if xshape[-1] != rop.out.shape[-1]:
                    continue
                users = list(g.successors(name))
                set_op(g, name, replace(op, inputs=(x,), out=replace(
                    op.out, shape=xshape[:-1] + op.out.shape[-1:])))
                g.remove_node(r)
                add_op(g, r, Op("reshape", (name,), op.out, source=rop.source))
                for u in users:
                    uop = op_of(g, u)
                    set_op(g, u, replace(uop, inputs=tuple(r if i == name else i
                                                           for i in uop.inputs)))
                changed = True
    return g


# ------------------------------------------------------------------------------ torch.export

def _source_of(node) -> str | None:
    """``file:line`` of the user code that created an FX node (innermost frame outside torch)."""
    trace = node.meta.get("stack_trace") or ""
    frames = re.findall(r'File "([^"]+)", line (\d+)', trace)
    torch_dir = os.path.dirname(torch.__file__)
    user = [f for f in frames if not f[0].startswith(torch_dir)]
    pick = (user or frames or [None])[-1]
    return f"{pick[0]}:{pick[1]}" if pick else None


def _unsupported(op: str, node: str, source: str | None, why: str = "") -> UnsupportedOpError:
    where = f" at {source}" if source else " (no source location recorded)"
    extra = f" ({why})" if why else ""
    return UnsupportedOpError(f"unsupported op {op}{extra} in node '{node}'{where}; supported: "
                              "linear, relu, add, view/reshape/flatten, clone/dropout")


def _const(t) -> np.ndarray:
    return t.detach().cpu().to(torch.float32).numpy().copy()


def check_finite(named_tensors, where: str) -> None:
    """Refuse NaN or Inf in a model's float weights, naming the first such tensor.

    Quantization would turn them into arbitrary int8 codes, and golden, the ISA model and the
    RTL would then agree bit for bit on garbage; nothing downstream could notice.
    """
    for fqn, t in named_tensors:
        if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel():
            # in blocks: the masks of a whole 1 GB embedding (and isfinite's float32 copy of
            # a bfloat16 one) would cost more than the tensor
            flat = t.detach().reshape(-1)
            blocks = [flat[a:a + _FINITE_BLOCK] for a in range(0, flat.numel(), _FINITE_BLOCK)]
            n = sum(int((~torch.isfinite(b)).sum()) for b in blocks)
            if n:
                kind = "NaN" if any(bool(torch.isnan(b).any()) for b in blocks) else "Inf"
                raise FrontendError(f"{where}: tensor '{fqn}' holds {n} non-finite value"
                                    f"{'s' if n > 1 else ''} ({kind}); fix or retrain the "
                                    "model before compiling it")


def program_tensors(ep):
    """``(name, tensor)`` of an exported program's parameters, buffers and constants."""
    yield from ep.state_dict.items()
    yield from ep.constants.items()


def from_exported_program(ep, name: str = "model", rows: int = DEFAULT_ROWS) -> Graph:
    """Lower a ``torch.export.ExportedProgram`` to the float IR.

    Parameters
    ----------
    ep : torch.export.ExportedProgram
    name : str
        Graph name.
    rows : int
        Value for input dims that are dynamic (symbolic) in the program.
    """
    from torch.export.graph_signature import InputKind, OutputKind

    check_finite(program_tensors(ep), f"model '{name}'")
    b = _Builder(name)
    sig = ep.graph_signature
    const_of = {}
    for spec in sig.input_specs:
        if spec.kind in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
            t = ep.state_dict.get(spec.target)
            if t is None:
                t = ep.constants.get(spec.target)
            if t is None:
                raise FrontendError(f"exported program has no value for '{spec.target}'")
            const_of[spec.arg.name] = _const(t)
        elif spec.kind != InputKind.USER_INPUT:
            raise FrontendError(f"exported program input '{spec.arg.name}' of kind "
                                f"{spec.kind.name} is not supported")
    env: dict[str, object] = {}
    out_node = None
    for node in ep.graph.nodes:
        if node.op == "placeholder":
            if node.name in const_of:
                env[node.name] = const_of[node.name]
            else:
                val = node.meta.get("val")
                if val is None or not hasattr(val, "shape"):
                    raise FrontendError(f"input '{node.name}' is not a tensor")
                shape = tuple(int(d) if isinstance(d, int) or str(d).isdigit() else rows
                              for d in val.shape)
                env[node.name] = b.input(node.name, shape)
        elif node.op == "get_attr":
            obj = ep.graph_module
            for part in node.target.split("."):
                obj = getattr(obj, part)
            env[node.name] = _const(obj)
        elif node.op == "call_function":
            env[node.name] = _lower_fx(b, node, env)
        elif node.op == "output":
            out_node = node
    outs = list(out_node.args[0]) if out_node is not None else []
    user = [s.kind == OutputKind.USER_OUTPUT for s in sig.output_specs]
    outs = [o for o, u in zip(outs, user, strict=False) if u] if len(user) == len(outs) else outs
    for i, o in enumerate(outs):
        b.output(env[o.name], "output" if len(outs) == 1 else f"output_{i}")
    return check(canonicalize(b.g))


def _op_name(target) -> tuple[str, str]:
    """('aten.linear.default', 'linear') for an FX call target."""
    full = str(target)
    if full.startswith("<"):
        full = getattr(target, "__name__", full)
    parts = full.split(".")
    base = parts[1] if parts[0] == "aten" and len(parts) > 1 else parts[-1]
    return full, base.rstrip("_") if base not in ("_unsafe_view",) else base


def _lower_fx(b: _Builder, node, env):
    full, op = _op_name(node.target)
    src = _source_of(node)

    def arg(i, key=None, default=None):
        if i < len(node.args):
            a = node.args[i]
        elif key is not None and key in node.kwargs:
            a = node.kwargs[key]
        else:
            return default
        if isinstance(a, (list, tuple)):
            return [env[x.name] if hasattr(x, "name") and x.name in env else x for x in a]
        return env[a.name] if hasattr(a, "name") and getattr(a, "name", None) in env else a

    x = arg(0)
    is_const = isinstance(x, np.ndarray)
    if op in _TRANSPOSES and is_const:
        if op == "permute":
            return np.ascontiguousarray(np.transpose(x, arg(1, "dims")))
        if op == "transpose":
            return np.ascontiguousarray(np.swapaxes(x, arg(1, "dim0"), arg(2, "dim1")))
        return np.ascontiguousarray(x.T)
    if op in _IDENTITIES:
        return x
    if op == "dropout":
        if arg(2, "train", False):
            raise _unsupported(full, node.name, src, "dropout in training mode; call .eval()")
        return x
    if op == "linear":
        w, bias = arg(1, "weight"), arg(2, "bias")
        if is_const or not isinstance(w, np.ndarray) or not (
                bias is None or isinstance(bias, np.ndarray)):
            raise _unsupported(full, node.name, src, "weight and bias must be constants")
        return b.linear(node.name, x, w, bias, src)
    if op in ("addmm", "mm"):
        bias, xx, w = (x, arg(1), arg(2)) if op == "addmm" else (None, x, arg(1))
        if op == "addmm" and (arg(3, "beta", 1) != 1 or arg(4, "alpha", 1) != 1):
            raise _unsupported(full, node.name, src, "beta/alpha other than 1")
        if isinstance(xx, np.ndarray) or not isinstance(w, np.ndarray) or not (
                bias is None or isinstance(bias, np.ndarray)):
            raise _unsupported(full, node.name, src, "needs activation @ constant weight")
        return b.linear(node.name, xx, w.T, bias, src)  # mm's weight is [K, N]
    if op == "relu":
        if is_const:
            return np.maximum(x, 0)
        return b.node(node.name, "relu", (x,), b.shape(x), source=src)
    if op == "add" and full.split(".")[-1] == "Tensor":
        y = arg(1, "other")
        if arg(2, "alpha", 1) != 1:
            raise _unsupported(full, node.name, src, "alpha other than 1")
        if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            raise _unsupported(full, node.name, src, "add of a constant; only tensor + tensor")
        if b.shape(x) != b.shape(y):
            raise _unsupported(full, node.name, src, f"broadcasting add {list(b.shape(x))} + "
                                                     f"{list(b.shape(y))}")
        return b.node(node.name, "add", (x, y), b.shape(x), source=src)
    if op in _RESHAPES and not is_const:
        val = node.meta.get("val")
        if val is not None and all(isinstance(d, int) for d in val.shape):
            shape = tuple(val.shape)
        elif op == "flatten":
            shape = _flatten_target(b.shape(x), arg(1, "start_dim", 0), arg(2, "end_dim", -1))
        else:
            shape = _reshape_target(b.shape(x), arg(1, "size"))
        return b.reshape(node.name, x, shape, src)
    raise _unsupported(full, node.name, src)


# ------------------------------------------------------------------------------- TorchScript

def from_torchscript(module, name: str = "model", rows: int = DEFAULT_ROWS) -> Graph:
    """Lower a loaded TorchScript module (``torch.jit.ScriptModule``) to the float IR.

    The graph input is ``[rows, in_features]`` of the first linear layer met in the graph.
    """
    check_finite(module.state_dict().items(), f"model '{name}'")
    graph = module.inlined_graph if hasattr(module, "inlined_graph") else module.graph
    b = _Builder(name)
    env: dict = {}
    ins = list(graph.inputs())
    if not ins:
        raise FrontendError("TorchScript graph has no inputs")
    env[ins[0].unique()] = module  # 'self'
    for n in graph.nodes():
        if n.kind() in ("prim::If", "prim::Loop"):
            # Branches and loops hide their layers in sub-blocks; the accelerator runs a
            # straight-line program, so the model must be traced, not scripted.
            name = _ts_name(next(iter(n.outputs()))) if n.outputsSize() else n.kind()
            raise _unsupported(n.kind(), name, _ts_source(n),
                               "data-dependent control flow; export the model with "
                               "torch.export.save, which records one straight-line path")
    user_inputs = ins[1:]
    if len(user_inputs) != 1:
        raise FrontendError(f"TorchScript model takes {len(user_inputs)} inputs; only models "
                            "with one tensor input are supported")
    width = _first_linear_width(graph, env)
    if width is None:
        raise FrontendError("TorchScript model has no linear layer to take the input width "
                            "from; save it with torch.export.save instead")
    env[user_inputs[0].unique()] = b.input(_ts_name(user_inputs[0]), (rows, width))
    for n in graph.nodes():
        _lower_ts(b, n, env)
    outs = []
    for o in graph.outputs():
        v = env[o.unique()]
        outs.extend(v if isinstance(v, (list, tuple)) else [v])
    for i, v in enumerate(outs):
        b.output(v, "output" if len(outs) == 1 else f"output_{i}")
    return check(canonicalize(b.g))


def _ts_name(value) -> str:
    return re.sub(r"\.\d+$", "", value.debugName()) or "x"


def _ts_source(node) -> str | None:
    try:
        text = node.sourceRange()
    except Exception:  # noqa: BLE001 -- debug info is optional
        return None
    m = re.search(r"([^\s\"']+\.py)[\"']?[:(,]\s*(?:line\s*)?(\d+)", text)
    return f"{m.group(1)}:{m.group(2)}" if m else None


def _first_linear_width(graph, env) -> int | None:
    # Resolve GetAttr chains on a scratch env just to find the first weight of aten::linear.
    scratch = dict(env)
    for n in graph.nodes():
        if n.kind() == "prim::GetAttr":
            obj = scratch.get(n.input().unique())
            if obj is not None:
                scratch[n.output().unique()] = getattr(obj, n.s("name"), None)
        elif n.kind() in ("aten::linear", "aten::matmul"):
            w = scratch.get(list(n.inputs())[1].unique())
            if isinstance(w, torch.Tensor) and w.dim() == 2:
                return int(w.shape[1])
    return None


def _lower_ts(b: _Builder, n, env):
    kind = n.kind()
    outs = list(n.outputs())
    ins = [env.get(i.unique()) for i in n.inputs()]
    src = _ts_source(n)

    def setv(v):
        env[outs[0].unique()] = v

    def val(v):
        return _const(v) if isinstance(v, torch.Tensor) else v

    if kind == "prim::GetAttr":
        setv(getattr(ins[0], n.s("name")))
    elif kind == "prim::Constant":
        setv(outs[0].toIValue() if outs else None)
    elif kind in ("prim::ListConstruct", "prim::TupleConstruct"):
        setv(list(ins))
    elif kind in ("prim::TupleUnpack", "prim::ListUnpack"):
        for o, v in zip(outs, ins[0], strict=True):
            env[o.unique()] = v
    elif kind == "prim::NumToTensor" or kind == "aten::Int":
        setv(ins[0])
    elif kind == "aten::linear":
        w, bias = val(ins[1]), val(ins[2])
        if not isinstance(w, np.ndarray) or not isinstance(ins[0], str):
            raise _unsupported(kind, _ts_name(outs[0]), src, "weight must be a constant")
        setv(b.linear("linear", ins[0], w, bias, src))
    elif kind in ("aten::relu", "aten::relu_"):
        setv(b.node("relu", "relu", (ins[0],), b.shape(ins[0]), source=src))
    elif kind in ("aten::add", "aten::add_"):
        x, y = ins[0], ins[1]
        if not (isinstance(x, str) and isinstance(y, str)) or (len(ins) > 2 and ins[2] != 1):
            raise _unsupported(kind, _ts_name(outs[0]), src, "only tensor + tensor, alpha 1")
        if b.shape(x) != b.shape(y):
            raise _unsupported(kind, _ts_name(outs[0]), src, "broadcasting add")
        setv(b.node("add", "add", (x, y), b.shape(x), source=src))
    elif kind in ("aten::flatten",):
        setv(b.reshape("reshape", ins[0], _flatten_target(b.shape(ins[0]), ins[1], ins[2]), src))
    elif kind in ("aten::view", "aten::reshape", "aten::_unsafe_view"):
        setv(b.reshape("reshape", ins[0], _reshape_target(b.shape(ins[0]), ins[1]), src))
    elif kind in ("aten::contiguous", "aten::clone", "aten::detach", "aten::alias"):
        setv(ins[0])
    elif kind in ("aten::dropout", "aten::dropout_"):
        if ins[2]:
            raise _unsupported(kind, _ts_name(outs[0]), src, "dropout in training mode")
        setv(ins[0])
    elif kind == "aten::size":
        shape = b.shape(ins[0])
        setv(list(shape) if len(ins) < 2 else shape[ins[1]])
    else:
        raise _unsupported(kind, _ts_name(outs[0]) if outs else kind, src)
