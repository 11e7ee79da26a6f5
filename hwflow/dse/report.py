"""What a sweep writes to its output folder: the Pareto set, points.csv / points.json,
pareto.json, the plots and summary.html, each written atomically."""

from __future__ import annotations

import csv
import html
import io
import json
import math
import os
from pathlib import Path

from hwflow.dse.evaluate import point_feasibility
from hwflow.dse.space import RESOURCE_KINDS, Space

# ------------------------------------------------------------------------------ outputs

def pareto_front(rows: list, objectives: dict) -> list:
    """The non-dominated rows (feasible only) over ``objectives`` (metric -> max/min)."""
    cand = [r for r in rows if r["feasible"]]
    sign = {m: (-1 if d == "max" else 1) for m, d in objectives.items()}

    def vec(r):
        return [sign[m] * float(r["metrics"].get(m, math.inf)) for m in objectives]

    vs = [vec(r) for r in cand]
    front = []
    for i, a in enumerate(vs):
        dominated = any(all(b[j] <= a[j] for j in range(len(a))) and b != a
                        for k, b in enumerate(vs) if k != i)
        if not dominated:
            front.append(cand[i])
    first = next(iter(objectives))
    front.sort(key=lambda r: (sign[first] * r["metrics"][first], r["point_id"]))
    return front


def _atomic_write(path: Path, data: bytes | str) -> None:
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


def table_rows(results: list, space: Space) -> list:
    """Results with their feasibility under the space's constraints."""
    rows = []
    for r in results:
        feasible, _ = point_feasibility(r, space)
        rows.append({**r, "feasible": feasible})
    return rows


def points_csv(rows: list, space: Space) -> str:
    metric_cols = []
    for r in rows:
        for k in r["metrics"]:
            if k not in metric_cols and k not in space.parameters:   # clock_mhz: one column
                metric_cols.append(k)
    cols = ["point_id", *space.names, "status", "fits", "feasible", "reason", *metric_cols,
            "eval_s"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in rows:
        vals = {"point_id": r["point_id"], **r["params"], "status": r["status"],
                "fits": r["fits"], "feasible": r["feasible"], "reason": r["reason"],
                **r["metrics"], "eval_s": f"{r['eval_s']:.4f}"}
        w.writerow(["" if vals.get(c) is None else (f"{vals[c]:.6g}" if isinstance(vals[c],
                    float) and c != "eval_s" else vals[c]) for c in cols])
    return buf.getvalue()


def _plots(out: Path, rows: list, front: list, space: Space, title: str) -> list:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # one plot per resource some point uses (URAM stays 0 in every design today)
    kinds = ["resource_fraction"] + [k for k in RESOURCE_KINDS
                                     if any(r["metrics"].get(k) for r in rows)]
    ok = [r for r in rows if r["status"] == "ok"]
    front_ids = {r["point_id"] for r in front}
    files = []
    for kind in kinds:
        fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=100)
        for sel, style in (([r for r in ok if not r["feasible"]],
                            dict(c="0.7", marker="x", s=14, label="infeasible")),
                           ([r for r in ok if r["feasible"] and r["point_id"] not in front_ids],
                            dict(c="tab:blue", marker="o", s=14, alpha=.6, label="feasible"))):
            if sel:
                ax.scatter([r["metrics"].get(kind, 0) for r in sel],
                           [r["metrics"]["throughput"] for r in sel], **style)
        if front:
            pts = sorted((r["metrics"].get(kind, 0), r["metrics"]["throughput"]) for r in front)
            ax.scatter(*zip(*pts, strict=True), c="tab:red", marker="*", s=60, zorder=3,
                       label=f"Pareto ({len(front)})")
            if kind == "resource_fraction" and list(space.objectives) == ["throughput",
                                                                          "resource_fraction"]:
                ax.plot(*zip(*pts, strict=True), c="tab:red", lw=1, drawstyle="steps-post")
        unit = ok[0]["metrics"].get("throughput_unit", "") if ok else ""
        ax.set_xlabel(kind.replace("_", " ") + ("" if "fraction" in kind else " (used)"))
        ax.set_ylabel(f"throughput ({unit})")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", metadata={"Software": None})
        plt.close(fig)
        name = f"throughput_vs_{kind}.png"
        _atomic_write(out / name, buf.getvalue())
        files.append(name)
    return files


def _summary_html(rows, front, space, info: dict, plots: list, verify: list) -> str:
    e = html.escape
    objs = ", ".join(f"{d}imize {m}" for m, d in space.objectives.items())
    cons = ", ".join(f"{m} {' '.join(f'{k} {v}' for k, v in b.items())}"
                     for m, b in space.constraints.items()) or "the board's resources"
    head = ["point", *space.names, "throughput", "latency_ms", "resource_fraction",
            "dominant_resource"]
    tr = "".join("<tr>" + "".join(
        f"<td>{e(str(v))}</td>" for v in
        [r["point_id"], *r["params"].values(),
         *(f"{r['metrics'].get(k):.4g}" if isinstance(r["metrics"].get(k), float)
           else r["metrics"].get(k) for k in head[len(space.names) + 1:])]) + "</tr>"
        for r in front)
    params = "".join(f"<li><b>{e(k)}</b>: {e(', '.join(map(str, v)))}</li>"
                     for k, v in space.parameters.items())
    imgs = "".join(f'<p><img src="{e(p)}" alt="{e(p)}"></p>' for p in plots)
    ver = ""
    if verify:
        ver = "<h2>Verified in RTL</h2><table><tr><th>point</th><th>result</th></tr>" + "".join(
            f"<tr><td>{v['point_id']}</td><td>{e(v['summary'])}</td></tr>" for v in verify
        ) + "</table>"
    c = info["counts"]
    return f"""<!doctype html>
<html><head><meta charset="utf-8">
<title>hwflow dse: {e(info['model'])} on {e(info['board'])}</title>
<style>body{{font-family:sans-serif;max-width:70em;margin:2em auto}}
table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}}</style></head><body>
<h1>hwflow dse: {e(info['model'])} ({e(info['kind'])}) on {e(info['board'])}</h1>
<p>Sampler {e(info['sampler'])}; objectives: {e(objs)}; constraints: {e(cons)}.</p>
<p>{c['points']} points evaluated of a space of {space.size}: {c['feasible']} feasible,
{c['infeasible']} infeasible (do not fit or break a constraint), {c['invalid']} invalid
configurations, {c['error']} errors; {len(front)} on the Pareto front.</p>
<h2>Space</h2><ul>{params}</ul>
<h2>Pareto set</h2><table><tr>{''.join(f'<th>{e(h)}</th>' for h in head)}</tr>{tr}</table>
{ver}<h2>Plots</h2>{imgs}
</body></html>
"""


def write_outputs(out: Path, results: list, space: Space, info: dict,
                  verify: list | None = None) -> dict:
    """points.csv, points.json, pareto.json, the plots and summary.html, each atomically."""
    rows = table_rows(results, space)
    front = pareto_front(rows, space.objectives)
    counts = {"points": len(rows), "feasible": sum(r["feasible"] for r in rows),
              "infeasible": sum(r["status"] == "ok" and not r["feasible"] for r in rows),
              "invalid": sum(r["status"] == "invalid" for r in rows),
              "error": sum(r["status"] == "error" for r in rows), "pareto": len(front)}
    info = {**info, "counts": counts}
    out.mkdir(parents=True, exist_ok=True)
    _atomic_write(out / "points.csv", points_csv(rows, space))
    meta = {k: v for k, v in info.items() if k != "counts"}
    _atomic_write(out / "points.json", json.dumps(
        {**meta, "space": space.to_dict(), "counts": counts, "points": rows}, indent=1) + "\n")
    _atomic_write(out / "pareto.json", json.dumps(
        {**meta, "objectives": space.objectives, "points": front}, indent=1) + "\n")
    title = f"{info['model']} on {info['board']}: {counts['points']} points"
    plots = _plots(out, rows, front, space, title)
    if verify is not None:
        _atomic_write(out / "verify.json", json.dumps(verify, indent=1) + "\n")
    _atomic_write(out / "summary.html", _summary_html(rows, front, space, info, plots,
                                                      verify or []))
    return {"counts": counts, "pareto": front, "plots": plots}
