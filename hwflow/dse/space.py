"""The design space of ``hwflow dse``: the YAML space file, its validation and its points.

A space file names the parameters to sweep, each as a list of values or a range, and
optionally the objectives and constraints of the search::

    parameters:
      chains: [4, 8, 16, 32]                    # a list of values
      chain_len: {values: [8, 16]}              # the same, spelled out
      act_depth: {min: 1024, max: 4096, step: 1024}
      weight_depth: {min: 128, max: 1024, factor: 2}   # 128, 256, 512, 1024
      weights: [int8, int4, mixed]
      sparsity: [dense, "2:4"]
      clock_mhz: [200, 250, 300]
    objectives:                                 # default: throughput max, resource_fraction min
      throughput: max
      resource_fraction: min
    constraints:                                # on top of the board's own resources
      dsp_fraction: {max: 0.5}

Every point is the board's default engine (:func:`hwflow.mapping.accel_config.choose_config`) with
the point's values; :data:`PARAMETERS` lists what may be swept and what each applies to.
Errors are one line (:class:`~hwflow.errors.HwflowError`) naming the file and the problem.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from hwflow.compiler.passes import WEIGHT_CHOICES
from hwflow.errors import HwflowError

MLP, DECODER = "mlp", "decoder"


@dataclass(frozen=True)
class Parameter:
    """One sweepable parameter: its value type, the model kinds it applies to, what it sets."""

    kind: str                     # "int", "number", "choice"
    applies: tuple = (MLP, DECODER)
    doc: str = ""
    choices: tuple = ()           # for "choice": the legal values per model kind (or all)


#: Engine sizes (AccelConfig fields), precisions, sparsity, clock. ``mem_ports``, when a
#: space does not name it, follows the engine's width: one weight row per cycle
#: (``chains * chain_len / port_bytes``), capped by the board's ``memory.ports``.
PARAMETERS = {
    "chains": Parameter("int", doc="P, DSP chains of the matrix engine"),
    "chain_len": Parameter("int", doc="L, DSP48E2 slices per chain (activation word bytes)"),
    "mem_ports": Parameter("int", doc="external memory ports (HBM pseudo-channels / DDR)"),
    "act_depth": Parameter("int", doc="activation buffer depth (words of L bytes)"),
    "weight_depth": Parameter("int", doc="weight ring depth (rows of P*L bytes)"),
    "tlmm_g": Parameter("int", doc="ternary weights per TLMM group index (2, 3, 4)"),
    "tlmm_t": Parameter("int", doc="TLMM lookup tables"),
    "tlmm_q": Parameter("int", doc="TLMM replicas of each table"),
    "tlmm_acc_depth": Parameter("int", doc="TLMM accumulator depth"),
    "attn_heads": Parameter("int", applies=(DECODER,),
                            doc="attention lanes (query heads from one kv-head read)"),
    "weights": Parameter("choice", doc="weight precision",
                         choices=((MLP, WEIGHT_CHOICES),
                                  (DECODER, ("int8", "int4", "mixed", "ternary")))),
    "sparsity": Parameter("choice", applies=(MLP,),
                          doc="N:M weight sparsity: dense, auto or N:M (MLP models; the "
                          "decoder predictor models dense weights)"),
    "clock_mhz": Parameter("number", doc="kernel clock (at most the board's kernel clock)"),
    "max_context": Parameter("int", applies=(DECODER,), doc="decoder KV-cache length"),
}
ENGINE_PARAMETERS = ("chains", "chain_len", "mem_ports", "act_depth", "weight_depth",
                     "tlmm_g", "tlmm_t", "tlmm_q", "tlmm_acc_depth", "attn_heads")

#: Metrics an objective or a constraint may name, with the default direction.
RESOURCE_KINDS = ("lut", "ff", "dsp", "bram", "uram")
METRICS = {"throughput": "max", "latency_ms": "min", "cycles": "min",
           "resource_fraction": "min",
           **{k: "min" for k in RESOURCE_KINDS},
           **{f"{k}_fraction": "min" for k in RESOURCE_KINDS}}
DEFAULT_OBJECTIVES = {"throughput": "max", "resource_fraction": "min"}
DIRECTIONS = {"max": "max", "maximize": "max", "min": "min", "minimize": "min"}
#: A grid larger than this is refused (enumerating it for the fit check alone takes minutes).
MAX_POINTS = 1_000_000


@dataclass
class Space:
    """A validated space: parameters (name -> list of values, file order), objectives
    (metric -> "max"/"min"), constraints (metric -> {"max"/"min": bound}), its source."""

    parameters: dict
    objectives: dict = field(default_factory=lambda: dict(DEFAULT_OBJECTIVES))
    constraints: dict = field(default_factory=dict)
    source: str = ""

    @property
    def names(self) -> list:
        return list(self.parameters)

    @property
    def size(self) -> int:
        return math.prod(len(v) for v in self.parameters.values())

    def points(self):
        """Every point, as ``(point_id, {name: value})``, in a deterministic order (the last
        parameter varies fastest; ``point_id`` is the position in that order)."""
        for i, vals in enumerate(itertools.product(*self.parameters.values())):
            yield i, dict(zip(self.parameters, vals, strict=True))

    def point_id(self, params: dict) -> int:
        """Position of ``params`` in :meth:`points` (mixed radix over the value lists)."""
        idx = 0
        for name, vals in self.parameters.items():
            idx = idx * len(vals) + vals.index(params[name])
        return idx

    def to_dict(self) -> dict:
        return {"parameters": self.parameters, "objectives": self.objectives,
                "constraints": self.constraints}


def _fail(where: str, msg: str):
    raise HwflowError(f"{where}: {msg}")


def _type_name(v) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string",
            list: "list", dict: "mapping", type(None): "null"}.get(type(v), type(v).__name__)


def _check_value(where: str, name: str, p: Parameter, v, model_kind: str):
    if p.kind == "int":
        if isinstance(v, bool) or not isinstance(v, int):
            _fail(where, f"parameter '{name}': value {v!r} is a {_type_name(v)}, expected an "
                  f"integer")
        if v < 1:
            _fail(where, f"parameter '{name}': value {v} must be >= 1")
        return v
    if p.kind == "number":
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            _fail(where, f"parameter '{name}': value {v!r} is a {_type_name(v)}, expected a "
                  f"number")
        if not v > 0 or not math.isfinite(v):
            _fail(where, f"parameter '{name}': value {v} must be a positive number")
        return v
    # choices: strings
    if not isinstance(v, str):
        _fail(where, f"parameter '{name}': value {v!r} is a {_type_name(v)}, expected a "
              f"string")
    if name == "sparsity":
        from hwflow.compiler import CompileError
        from hwflow.compiler.passes import SPARSITY_CHOICES, parse_sparsity

        try:
            parse_sparsity(v)
        except CompileError as e:
            _fail(where, f"parameter 'sparsity': value '{v}': {e}; use {SPARSITY_CHOICES}")
        return v
    legal = dict(p.choices).get(model_kind, ())
    if v not in legal:
        _fail(where, f"parameter '{name}': value '{v}' is not one of {', '.join(legal)} "
              f"(for a{'n' if model_kind == MLP else ''} {model_kind} model)")
    return v


def _expand(where: str, name: str, spec) -> list:
    """A parameter's spec (list, ``{values}``, ``{min, max, step|factor}``, or one scalar)
    as the list of its values."""
    if isinstance(spec, dict):
        keys = set(spec)
        if "values" in keys:
            if keys != {"values"}:
                _fail(where, f"parameter '{name}': 'values' cannot be combined with "
                      f"{', '.join(sorted(map(str, keys - {'values'})))}")
            spec = spec["values"]
            if not isinstance(spec, list):
                _fail(where, f"parameter '{name}': 'values' must be a list")
        else:
            extra = keys - {"min", "max", "step", "factor"}
            if extra or not {"min", "max"} <= keys or {"step", "factor"} <= keys:
                _fail(where, f"parameter '{name}': a range is {{min, max}} with an optional "
                      f"step or factor (got {', '.join(sorted(map(str, keys))) or 'nothing'})")
            for k in ("min", "max", "step", "factor"):
                if k in spec:
                    _check_bound(where, name, k, spec[k])
            lo, hi = spec["min"], spec["max"]
            if lo > hi:
                _fail(where, f"parameter '{name}': empty range (min {lo} > max {hi})")
            if "factor" in spec:
                return _geometric(where, name, lo, hi, spec["factor"])
            step = spec.get("step", 1)
            if not step > 0:
                _fail(where, f"parameter '{name}': step {step} must be > 0")
            n = _range_count(where, name, (hi - lo) / step)
            if all(isinstance(v, int) for v in (lo, hi, step)):
                return [lo + i * step for i in range(n)]
            return [round(lo + i * step, 12) for i in range(n)]
    if not isinstance(spec, list):
        spec = [spec]
    if not spec:
        _fail(where, f"parameter '{name}': empty list of values")
    return spec


def _check_bound(where: str, name: str, key: str, v) -> None:
    """A range's ``min``, ``max``, ``step`` or ``factor``: a finite number."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        _fail(where, f"parameter '{name}': {key} {v!r} is a {_type_name(v)}, expected a "
              f"number")
    if not math.isfinite(v):
        _fail(where, f"parameter '{name}': {key} {v} must be a finite number")


def _range_count(where: str, name: str, span: float) -> int:
    """Values in a range ``span`` steps long, refused beyond :data:`MAX_POINTS` (before
    they are listed: a range of 10**300 values would never end)."""
    if not span < MAX_POINTS:
        _fail(where, f"parameter '{name}': more than {MAX_POINTS:,} values")
    return int(math.floor(span + 1e-9)) + 1


def _geometric(where: str, name: str, lo, hi, f) -> list:
    """``lo, lo*f, lo*f**2, ...`` up to ``hi``."""
    if not f > 1:
        _fail(where, f"parameter '{name}': factor {f} must be > 1")
    if not lo > 0:
        _fail(where, f"parameter '{name}': a geometric range needs min > 0")
    _range_count(where, name, math.log(hi / lo) / math.log(f))
    out, v = [], lo
    while v <= hi * (1 + 1e-12):
        out.append(v)
        v = v * f
    return out


def _metric(where: str, what: str, name) -> str:
    if not isinstance(name, str) or name not in METRICS:
        _fail(where, f"{what} '{name}' is not a metric (known: {', '.join(METRICS)})")
    return name


def parse_space(data, model_kind: str = MLP, where: str = "space") -> Space:
    """Validate a space given as parsed YAML; raise :class:`HwflowError` on the first problem.

    Parameters
    ----------
    data : dict
        The YAML document: ``parameters`` (required), ``objectives``, ``constraints``.
    model_kind : str
        ``"mlp"`` or ``"decoder"``: which parameters and values apply.
    where : str
        The file name used in messages.
    """
    if not isinstance(data, dict):
        _fail(where, "expected a YAML mapping with 'parameters' (and optional 'objectives', "
              "'constraints')")
    extra = set(data) - {"parameters", "objectives", "constraints"}
    if extra:
        _fail(where, f"unknown section '{sorted(map(str, extra))[0]}' (known: parameters, "
              f"objectives, constraints)")
    params = data.get("parameters")
    if not isinstance(params, dict) or not params:
        _fail(where, "'parameters' must be a non-empty mapping of parameter -> values")
    out = {}
    for name, spec in params.items():
        if name not in PARAMETERS:
            _fail(where, f"unknown parameter '{name}' (known: {', '.join(PARAMETERS)})")
        p = PARAMETERS[name]
        if model_kind not in p.applies:
            _fail(where, f"parameter '{name}' does not apply to a {model_kind} model "
                  f"({p.doc}); remove it")
        vals = [_check_value(where, name, p, v, model_kind) for v in _expand(where, name, spec)]
        if p.kind == "int" and any(v != int(v) for v in vals):
            _fail(where, f"parameter '{name}': the range gives non-integer values")
        dedup = list(dict.fromkeys(vals))
        out[name] = dedup

    objectives = data.get("objectives", None)
    if objectives is None:
        objectives = dict(DEFAULT_OBJECTIVES)
    if isinstance(objectives, list):
        objectives = {_metric(where, "objective", m): METRICS.get(m) for m in objectives}
    if not isinstance(objectives, dict) or not objectives:
        _fail(where, "'objectives' must map metrics to max or min, e.g. {throughput: max}")
    objs = {}
    for m, d in objectives.items():
        _metric(where, "objective", m)
        if not isinstance(d, str) or d not in DIRECTIONS:
            _fail(where, f"objective '{m}': direction {d!r} must be max or min")
        objs[m] = DIRECTIONS[d]

    constraints = data.get("constraints", None) or {}
    if not isinstance(constraints, dict):
        _fail(where, "'constraints' must map metrics to {max: X} or {min: X}")
    cons = {}
    for m, bound in constraints.items():
        _metric(where, "constraint", m)
        if (not isinstance(bound, dict) or not bound or set(bound) - {"max", "min"}
                or any(isinstance(b, bool) or not isinstance(b, (int, float))
                       or math.isnan(b) for b in bound.values())):
            _fail(where, f"constraint '{m}': expected {{max: NUMBER}} and/or {{min: NUMBER}}")
        cons[m] = dict(bound)

    space = Space(out, objs, cons, where)
    if space.size > MAX_POINTS:
        _fail(where, f"the space has {space.size:,} points; at most {MAX_POINTS:,}")
    return space


def load_space(path, model_kind: str = MLP) -> Space:
    """Read and validate a space file (see the module docstring)."""
    p = Path(path)
    if p.is_dir():
        raise HwflowError(f"space file '{path}' is a folder; pass the YAML space file")
    if not p.is_file():
        raise HwflowError(f"space file '{path}' not found")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise HwflowError(f"{p.name}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at "
                          f"offset {e.start}); a space file is YAML") from None
    except OSError as e:
        raise HwflowError(f"space file '{path}' cannot be read ({e.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise HwflowError(f"{p.name}: not valid YAML ({str(e).splitlines()[0]})") from None
    except RecursionError:             # deeply nested brackets
        raise HwflowError(f"{p.name}: not valid YAML (nested too deeply)") from None
    return parse_space(data, model_kind, where=p.name)
