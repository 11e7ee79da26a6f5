"""Fit the accelerator's resource model (LUT, FF, DSP, BRAM, URAM) on Yosys ``synth_xilinx`` runs.

The accelerator (``hwflow_accel``, :func:`hwflow.hw.top.generate_verilog`) is synthesized with
Yosys ``synth_xilinx -family xcup`` (the runner, options and cache of
:mod:`hwflow.export.fit`) at a set of parameter points (:data:`POINTS`): the matrix engine's
chains ``P`` and chain length ``L``, its sparse selectors and int4 dequantizer, the super-beat
``SB``, the buffers' depths (block RAM or distributed RAM) and the transformer units (vector +
attention, whose size follows ``L``). Whole accelerators are synthesized, not cut-out engines,
so the controller, sequencers, epilogues, gearboxes and memory ports are in every figure and
the model's terms split the total by the parameters that size each part
(:data:`hwflow.mapping.accel_config.RESOURCE_FEATURES`).

Per resource kind the model is linear in those features; the coefficients are fitted by least
squares (numpy) on the points of role ``"fit"`` and checked on the held-out points (role
``"holdout"``: parameter sets not used for fitting), whose error is reported as the model's
error. DSP, BRAM and URAM stay the analytic counts of
:func:`hwflow.mapping.accel_config.estimate_analytic` (exact on the synthesized points; their error
against Yosys is reported over all points).

The result (coefficients, the synthesized figures of every point and the held-out errors) is
written as JSON to ``mapping/fits/resources.json`` by ``benchmarks/fit_resources.py``;
:func:`hwflow.mapping.accel_config.estimate_resources` reads it.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hwflow.export import fit
from hwflow.hw.config import AccelConfig
from hwflow.mapping.accel_config import (
    ANALYTIC_KINDS,
    RESOURCE_FEATURES,
    RESOURCE_KINDS,
    RESOURCES_JSON,
    estimate_analytic,
    resource_features,
)

__all__ = ["POINTS", "FitPoint", "synth_point", "run_resource_fit", "fit_table",
           "LUTRAM_LUTS"]

#: Yosys family of every run (UltraScale+, the U280 / KV260 fabric).
FAMILY = "xcup"
TOP = "hwflow_accel"
#: LUTs of one LUTRAM cell (UltraScale+ SLICEM: RAM32M/RAM64M use 4 LUTs, RAM32M16/RAM64M8 all
#: 8; a dual-port RAMnX1D two copies of the single-port one), as benchmarks/tlmm_synth.py counts.
LUTRAM_LUTS = {"RAM16X1S": 1, "RAM32X1S": 1, "RAM64X1S": 1, "RAM128X1S": 2, "RAM256X1S": 4,
               "RAM16X1D": 2, "RAM32X1D": 2, "RAM64X1D": 2, "RAM128X1D": 4, "RAM256X1D": 8,
               "RAM32M": 4, "RAM64M": 4, "RAM32M16": 8, "RAM64M8": 8}


@dataclass(frozen=True)
class FitPoint:
    """One synthesized configuration: ``role`` ``"fit"`` (used for the coefficients) or
    ``"holdout"`` (only predicted, to measure the error)."""

    name: str
    role: str
    params: dict = field(hash=False)

    def config(self) -> AccelConfig:
        return AccelConfig(**self.params)


def _p(name, role, P, L, ports, pb, act, wd, sparse=True, int4=True, tf=False) -> FitPoint:
    return FitPoint(name, role, dict(chains=P, chain_len=L, mem_ports=ports, port_bytes=pb,
                                     act_depth=act, weight_depth=wd, sparse=sparse, int4=int4,
                                     transformer=tf))


#: The synthesized points. Fit points span P = 2..16, L = 4..16, SB = 8..256 B, dense /
#: sparse, int4 on / off, LUT-RAM (64-word) and block-RAM buffers, and the transformer units
#: at L = 4, 8 and 16; held-out points are other shapes (P = 6 and 8 x 12, the units at P = 4)
#: and feature mixes (dense with int4, a LUT-RAM ring at L = 8). Yosys wall time per point on
#: the shared 2-core machine: 21 s (2 x 4) to 372 s (units at L = 16) and 719 s (16 x 16 with
#: 8 ports, the U280 core); 3383 s for all 20 (in the JSON, per point).
POINTS = [
    _p("p2l4", "fit", 2, 4, 1, 8, 512, 256),
    _p("p2l4-lutram", "fit", 2, 4, 1, 8, 64, 16),
    _p("p2l4-dense", "fit", 2, 4, 1, 8, 512, 256, sparse=False, int4=False),
    _p("p4l4", "fit", 4, 4, 1, 16, 1024, 256),
    _p("p2l8", "fit", 2, 8, 1, 16, 2048, 512),
    _p("p4l8", "fit", 4, 8, 1, 32, 1024, 256),
    _p("p4l8-noint4", "fit", 4, 8, 1, 32, 1024, 256, int4=False),
    _p("p4l8-dense", "fit", 4, 8, 1, 32, 1024, 256, sparse=False, int4=False),
    _p("p2l16", "fit", 2, 16, 1, 32, 2048, 256),
    _p("p8l8", "fit", 8, 8, 2, 32, 1024, 256),
    _p("p8l16", "fit", 8, 16, 1, 16, 2048, 256),           # the KV260 core on one HP port
    _p("p16l16", "fit", 16, 16, 8, 32, 4096, 1024),        # the U280 default's core
    _p("p2l4-tf", "fit", 2, 4, 1, 8, 512, 256, tf=True),
    _p("p2l8-tf", "fit", 2, 8, 1, 16, 512, 256, tf=True),
    _p("p2l16-tf", "fit", 2, 16, 1, 32, 512, 256, tf=True),
    # held out
    _p("p2l8-lutram", "holdout", 2, 8, 1, 16, 64, 32),
    _p("p4l4-dense-int4", "holdout", 4, 4, 1, 16, 512, 128, sparse=False),
    _p("p6l16", "holdout", 6, 16, 1, 32, 2048, 256),
    _p("p8l12", "holdout", 8, 12, 3, 32, 1024, 256),
    _p("p4l4-tf", "holdout", 4, 4, 1, 16, 1024, 256, tf=True),
    _p("p8l16x4", "holdout", 8, 16, 4, 16, 2048, 256),     # the KV260 default core (4 ports)
]


def synth_cells(verilog: str, top: str = TOP) -> tuple[dict, float, bool]:
    """``(cells by type, Yosys seconds, cached)`` of ``synth_xilinx -family xcup``.

    Runs :mod:`hwflow.export.fit`'s Yosys script and shares its cache entries (same key:
    Verilog, top, family, options, script version, Yosys version), so a point that
    ``hwflow export`` already synthesized is free, and a re-run of the fit costs milliseconds.
    The raw cell counts are kept (a LUTRAM cell is 1 to 8 LUTs: :data:`LUTRAM_LUTS`).
    """
    exe = fit._yosys()
    version = fit._yosys_version(exe)
    key = hashlib.sha256()
    for part in (verilog, top, FAMILY, fit.SYNTH_OPTIONS, str(fit.SCRIPT_VERSION), version):
        key.update(part.encode() + b"\0")
    path = fit.synth_cache_dir() / f"{key.hexdigest()[:24]}.json"
    if path.is_file():
        d = json.loads(path.read_text())
        return dict(d["cells"]), float(d["meta"]["seconds"]), True
    cells, seconds = fit._run_yosys(exe, verilog, top, FAMILY, None)
    meta = {"tool": version, "family": FAMILY, "options": fit.SYNTH_OPTIONS,
            "seconds": round(seconds, 2), "cached": False}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps({"cells": cells, "meta": meta}, indent=1, sort_keys=True))
    tmp.replace(path)
    return cells, seconds, False


def measured_resources(cells: dict) -> dict:
    """Yosys cells to the model's kinds: ``lut`` = CLB LUTs in use (logic LUT1..LUT6 + LUTs as
    distributed RAM + SRL shift registers, as the board's LUT budget counts them), ``ff``,
    ``dsp``, ``bram`` (36 Kb blocks), ``uram``; plus the LUT split."""
    used = fit.parse_cells(cells)
    lutram = sum(n * LUTRAM_LUTS.get(c, 0) for c, n in cells.items())
    return {"lut": used["lut"] + lutram + used["srl"], "ff": used["ff"], "dsp": used["dsp"],
            "bram": used["bram"], "uram": used["uram"], "lut_logic": used["lut"],
            "lut_ram": lutram, "srl": used["srl"]}


def synth_point(point: FitPoint) -> dict:
    """Synthesize one point's accelerator; its parameters, features and measured resources."""
    from hwflow.flow import accelerator_verilog

    cfg = point.config()
    cells, seconds, cached = synth_cells(accelerator_verilog(cfg))
    return {"name": point.name, "role": point.role, "params": dict(point.params),
            "features": resource_features(cfg), "measured": measured_resources(cells),
            "yosys_seconds": round(seconds, 1), "cached": cached}


def _lstsq(rows: list[dict], names: list[str], kind: str) -> dict:
    X = np.array([[r["features"][n] for n in names] for r in rows], dtype=float)
    y = np.array([r["measured"][kind] for r in rows], dtype=float)
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    return {n: round(float(c), 4) + 0.0 for n, c in zip(names, coef, strict=True)}


def _errors(rows: list[dict], kind: str, predict) -> dict:
    """Per-point ``{name: (measured, predicted, error %)}`` and the max / mean absolute %."""
    pts = {}
    for r in rows:
        m = r["measured"][kind]
        p = predict(r)
        pct = 0.0 if m == p else (100.0 * (p - m) / m if m else float("inf"))
        pts[r["name"]] = {"measured": m, "predicted": round(p, 1), "error_pct": round(pct, 2)}
    errs = [abs(v["error_pct"]) for v in pts.values()]
    return {"points": pts, "max_abs_pct": round(max(errs), 2) if errs else None,
            "mean_abs_pct": round(float(np.mean(errs)), 2) if errs else None}


def fit_model(rows: list[dict]) -> dict:
    """Coefficients per fitted kind and the errors (fit and held-out points) of every kind."""
    fitrows = [r for r in rows if r["role"] == "fit"]
    held = [r for r in rows if r["role"] == "holdout"]
    model = {}
    for kind in RESOURCE_KINDS:
        if kind in ANALYTIC_KINDS:
            # analytic counts (mapping.accel_config); nothing fitted, every point is a check
            def pred(r, kind=kind):         # bram: whole 36 Kb blocks, as Yosys counts
                return -(-estimate_analytic(AccelConfig(**r["params"]))[kind] // 1)
            model[kind] = {"method": "analytic", "formula": RESOURCE_FEATURES[kind],
                           "fit_error": _errors(fitrows, kind, pred),
                           "holdout_error": _errors(held, kind, pred)}
            continue
        names = list(RESOURCE_FEATURES[kind])
        coef = _lstsq(fitrows, names, kind)

        def pred(r, coef=coef):
            return sum(c * r["features"][n] for n, c in coef.items())
        model[kind] = {"method": "least squares", "coefficients": coef,
                       "fit_error": _errors(fitrows, kind, pred),
                       "holdout_error": _errors(held, kind, pred)}
    return model


def run_resource_fit(out_path=None, points=None, jobs: int = 1, progress: bool = True) -> dict:
    """Synthesize the points, fit the model, and optionally write it as JSON.

    Parameters
    ----------
    out_path : path-like, optional
        Where to write the result (e.g. :data:`hwflow.mapping.accel_config.RESOURCES_JSON`); not
        written when None.
    points : list of FitPoint, optional
        Default :data:`POINTS`. Needs at least as many ``"fit"`` points as the largest feature
        set and one ``"holdout"`` point.
    jobs : int
        Yosys runs at a time (each is single threaded; ~1 GB of memory for the largest).
    progress : bool
        Print one line per point to stderr.

    Returns
    -------
    dict
        ``tool``, ``family``, ``features`` (per kind), ``model`` (per kind: coefficients or
        ``"analytic"``, fit and held-out errors), ``points`` (params, features, measured
        resources, Yosys seconds) and ``synth_seconds`` (sum of the Yosys runs behind them).
    """
    points = list(POINTS if points is None else points)
    if not any(p.role == "holdout" for p in points):
        raise ValueError("resource fit: no held-out point (role 'holdout') to report the "
                         "error on")
    need = max(len(v) for k, v in RESOURCE_FEATURES.items() if k not in ANALYTIC_KINDS)
    if sum(p.role == "fit" for p in points) < need:
        raise ValueError(f"resource fit: {need} fit points needed at least (features per kind)")
    t0 = time.monotonic()

    def one(p):
        r = synth_point(p)
        if progress:
            m = r["measured"]
            print(f"[{time.monotonic() - t0:6.0f} s] {p.name:<18} {p.role:<8} LUT {m['lut']:>6}"
                  f" FF {m['ff']:>6} DSP {m['dsp']:>4} BRAM {m['bram']:>4} URAM {m['uram']}"
                  f"  yosys {r['yosys_seconds']:.0f} s{' (cached)' if r['cached'] else ''}",
                  file=sys.stderr, flush=True)
        return r

    if jobs > 1:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            rows = list(pool.map(one, points))
    else:
        rows = [one(p) for p in points]
    result = {
        "tool": fit._yosys_version(fit._yosys()), "family": FAMILY,
        "options": fit.SYNTH_OPTIONS, "top": TOP,
        "lut_counts": "LUT1..LUT6 + LUTs used as distributed RAM + SRL16E/SRLC32E",
        "features": {k: v for k, v in RESOURCE_FEATURES.items()},
        "model": fit_model(rows),
        "points": rows,
        "synth_seconds": round(sum(r["yosys_seconds"] for r in rows), 1),
    }
    if out_path is not None:
        out = Path(out_path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    return result


def fit_table(result: dict) -> str:
    """The fit as a text table: kind, formula, fit points, held-out max / mean error."""
    n_fit = sum(r["role"] == "fit" for r in result["points"])
    n_held = sum(r["role"] == "holdout" for r in result["points"])
    head = f"{'kind':<5} {'fit pts':>7} {'fit max%':>8} {'held-out max%':>13} " \
           f"{'mean%':>6}  formula"
    lines = [head, "-" * 100]
    for kind, m in result["model"].items():
        if m["method"] == "analytic":
            formula = f"analytic: {m['formula']}"
        else:
            formula = " + ".join(f"{c:g}*{n}" if n != "1" else f"{c:g}"
                                 for n, c in m["coefficients"].items())
        f, h = m["fit_error"], m["holdout_error"]
        lines.append(f"{kind:<5} {n_fit:>7} {f['max_abs_pct']:>8.2f} {h['max_abs_pct']:>13.2f} "
                     f"{h['mean_abs_pct']:>6.2f}  {formula}")
    lines.append(f"({n_fit} fit + {n_held} held-out points; {result['tool']}, "
                 f"synth_xilinx -family {result['family']} {result['options']}; Yosys time "
                 f"behind the points {result['synth_seconds']:.0f} s)")
    return "\n".join(lines)


#: Where :func:`run_resource_fit`'s result lives in the source tree (for the refresh script).
DEFAULT_OUT = RESOURCES_JSON
