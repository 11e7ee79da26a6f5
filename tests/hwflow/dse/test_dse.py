"""hwflow dse: sweeps end to end on the bundled MLP, resume after kill -9, Dask, NSGA-II."""

import csv
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hwflow.cli import main
from hwflow.dse import RESULT_ATTR, run_dse

ROOT = Path(__file__).resolve().parents[3]
SMALL = ROOT / "examples" / "dse" / "mlp-small.yaml"
#: 72 points: long enough (about 0.05 s a point) to kill the driver mid-way
RESUME_SPACE = """parameters:
  chains: [2, 4, 8]
  chain_len: [4, 8, 16]
  weights: [int8, int4]
  sparsity: [dense, "2:4"]
  clock_mhz: [250, 300]
"""


def _rows(out: Path) -> list:
    """points.csv without the wall-time column, sorted by parameters."""
    with open(out / "points.csv") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r.pop("eval_s")
    return sorted(rows, key=lambda r: int(r["point_id"]))


def _stored(study: Path) -> int:
    """Results stored so far; read-only: a plain connect would create an empty file where the
    sweep is about to create its study (and the sweep rightly refuses a file it did not make)."""
    try:
        with sqlite3.connect(Path(study).resolve().as_uri() + "?mode=ro", uri=True,
                             timeout=1) as c:
            return c.execute("SELECT count(*) FROM trial_user_attributes WHERE key = ?",
                             (RESULT_ATTR,)).fetchone()[0]
    except sqlite3.Error:
        return 0


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory):
    """The small grid on two local worker processes (the default executor)."""
    out = tmp_path_factory.mktemp("dse") / "local"
    code = main(["dse", "--example", "mlp", "--board", "u280", "--space", str(SMALL),
                 "-o", str(out), "--jobs", "2"])
    assert code == 0
    return out


def test_grid_sweep_outputs(local_sweep):
    out = local_sweep
    for f in ("points.csv", "points.json", "pareto.json", "summary.html", "study.db",
              "throughput_vs_resource_fraction.png", "throughput_vs_dsp.png", "hwflow-dse.json"):
        assert (out / f).is_file(), f
    assert (out / "throughput_vs_dsp.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pts = json.loads((out / "points.json").read_text())
    assert pts["counts"]["points"] == 12 and len(pts["points"]) == 12
    assert [p["point_id"] for p in pts["points"]] == list(range(12))
    assert all(p["status"] == "ok" and p["metrics"]["cycles"] > 0 for p in pts["points"])
    # 2:4 sparsity runs the hidden layers at twice the rate: fewer cycles than dense
    by = {(p["params"]["chains"], p["params"]["weights"], p["params"]["sparsity"]): p
          for p in pts["points"]}
    assert by[(8, "int8", "2:4")]["metrics"]["cycles"] < by[(8, "int8", "dense")]["metrics"][
        "cycles"]
    front = json.loads((out / "pareto.json").read_text())["points"]
    assert front and all(p["feasible"] for p in front)
    feas = [p for p in pts["points"] if p["feasible"]]

    def dominates(a, b):
        ge = (a["metrics"]["throughput"] >= b["metrics"]["throughput"]
              and a["metrics"]["resource_fraction"] <= b["metrics"]["resource_fraction"])
        gt = (a["metrics"]["throughput"] > b["metrics"]["throughput"]
              or a["metrics"]["resource_fraction"] < b["metrics"]["resource_fraction"])
        return ge and gt

    ids = {p["point_id"] for p in front}
    for p in front:
        assert not any(dominates(q, p) for q in feas)
    for p in feas:                  # and every point off the front is dominated by one on it
        if p["point_id"] not in ids:
            assert any(dominates(q, p) for q in front)
    html = (out / "summary.html").read_text()
    assert "throughput_vs_dsp.png" in html and "Pareto set" in html


def test_rerun_evaluates_nothing(local_sweep, capsys):
    before = _rows(local_sweep)
    code = main(["dse", "--example", "mlp", "--board", "u280", "--space", str(SMALL),
                 "-o", str(local_sweep), "--jobs", "1"])
    assert code == 0
    assert "(0 evaluated now, 12 from the study)" in capsys.readouterr().out
    assert _rows(local_sweep) == before
    assert _stored(local_sweep / "study.db") == 12


def test_resume_after_kill_matches_uninterrupted_run(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(RESUME_SPACE)
    cmd = ["dse", "--example", "mlp", "--board", "u280", "--space", str(space), "--jobs", "1"]
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "hwflow.cli", *cmd, "-o", str(killed)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while _stored(killed / "study.db") < 5 and proc.poll() is None:
            assert time.monotonic() < deadline, "no point stored in 120 s"
            time.sleep(0.05)
        assert proc.poll() is None, "the sweep finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    partial = _stored(killed / "study.db")
    assert 5 <= partial < 72
    assert not (killed / "points.csv").exists()

    assert main([*cmd, "-o", str(killed)]) == 0              # resume
    assert main([*cmd, "-o", str(tmp_path / "whole")]) == 0  # uninterrupted
    assert _rows(killed) == _rows(tmp_path / "whole")
    assert len(_rows(killed)) == 72
    # nothing repeated: one stored result per point, whatever was running when killed
    assert _stored(killed / "study.db") == 72


def test_dask_local_cluster_gives_the_local_points(local_sweep, tmp_path):
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                      dashboard_address=None) as cluster:
        r = run_dse(example="mlp", board="u280", space=SMALL, out=tmp_path / "dask",
                    scheduler=cluster.scheduler_address, progress=False)
    assert r["search"]["evaluated"] == 12
    assert _rows(tmp_path / "dask") == _rows(local_sweep)


def test_nsga2_runs_and_persists(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(RESUME_SPACE)
    kw = dict(example="mlp", board="u280", space=space, out=tmp_path / "nsga2", jobs=1,
              sampler="nsga2", trials=10, seed=3, progress=False)
    r = run_dse(**kw)
    assert r["counts"]["points"] == 10 and r["search"]["evaluated"] == 10
    assert _stored(tmp_path / "nsga2" / "study.db") >= 10
    assert all(p["feasible"] for p in r["pareto"])
    # more trials on the same study: continues, evaluates only new points
    r2 = run_dse(**{**kw, "trials": 14})
    assert r2["search"]["resumed"] == 10 and r2["counts"]["points"] == 14
    ids = [p["point_id"] for p in json.loads((tmp_path / "nsga2" / "points.json").read_text())[
        "points"]]
    assert len(ids) == len(set(ids)) == 14


def test_infeasible_points_are_recorded_with_the_reason(tmp_path):
    space = tmp_path / "space.yaml"
    # on the KV260 (1248 DSP, 144 BRAM): 4 x 16 fits, 64 x 16 does not (block RAM), and
    # chain_len 3 is no valid engine (a 16 B super-beat is no multiple of a 3 B word)
    space.write_text("parameters:\n  chains: [4, 64]\n  chain_len: [16, 3]\n"
                     "  clock_mhz: [250, 400]\n")
    r = run_dse(example="mlp", board="kv260", space=space, out=tmp_path / "o", jobs=1,
                progress=False)
    pts = {tuple(p["params"].values()): p for p in
           json.loads((tmp_path / "o" / "points.json").read_text())["points"]}
    assert pts[(4, 16, 250)]["feasible"]
    assert not pts[(64, 16, 250)]["fits"] and "BRAM" in pts[(64, 16, 250)]["reason"]
    assert "clock 400 MHz > the board's kernel clock 250 MHz" in pts[(4, 16, 400)]["reason"]
    assert pts[(4, 3, 250)]["status"] == "invalid"
    assert "invalid engine configuration" in pts[(4, 3, 250)]["reason"]
    assert [p["point_id"] for p in r["pareto"]] == [pts[(4, 16, 250)]["point_id"]]


@pytest.mark.slow
def test_verify_compiles_and_simulates_a_pareto_point(tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text("parameters:\n  chains: [4]\n  chain_len: [8]\n  sparsity: [dense, '2:4']\n")
    code = main(["dse", "--example", "mlp", "--board", "u280", "--space", str(space),
                 "-o", str(tmp_path / "o"), "--jobs", "1", "--verify", "1"])
    assert code == 0
    v = json.loads((tmp_path / "o" / "verify.json").read_text())
    assert len(v) == 1 and v[0]["verified"] and v[0]["bit_exact"]
    assert abs(v[0]["cycle_error"]) < 0.1
    assert f"verify point {v[0]['point_id']}: BIT-EXACT" in capsys.readouterr().out


def test_decoder_sweep_predicts_tokens_per_second(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("parameters:\n  chains: [4, 8]\n  weights: [int8, ternary]\n"
                     "  max_context: [64, 256]\n  clock_mhz: [225]\n")
    r = run_dse(example="tiny-llama", board="u280", space=space, out=tmp_path / "o", jobs=1,
                progress=False)
    assert r["counts"]["points"] == 8 and r["counts"]["feasible"] == 8
    pts = {tuple(p["params"].values())[:3]: p["metrics"] for p in
           json.loads((tmp_path / "o" / "points.json").read_text())["points"]}
    # the figures are the predictor's at the point's clock
    from hwflow.boards import load_board
    from hwflow.dse import engine_overrides
    from hwflow.mapping.accel_config import choose_config
    from hwflow.predict import load_shape, predict_decoder

    board = load_board("u280")
    cfg = choose_config(board, **engine_overrides(board, {"chains": 8, "weights": "ternary"},
                                                  "decoder"))
    want = predict_decoder(load_shape("tiny-llama")[0], cfg, board, ternary=True,
                           max_context=256, clock_mhz=225, widen=False)
    got = pts[(8, "ternary", 256)]
    assert got["throughput"] == pytest.approx(want["decode"]["tokens_per_s"], rel=1e-12)
    assert got["ttft_ms_128"] == pytest.approx(want["prefill"]["128"]["ttft_ms"], rel=1e-12)
    assert got["bandwidth_achieved_gbps"] == pytest.approx(want["bandwidth"]["achieved_gbps"],
                                                           rel=1e-12)
    for m in pts.values():
        assert m["throughput_unit"] == "tokens/s" and m["throughput"] > 0
        assert m["ttft_ms_64"] > 0 and 0 < m["bandwidth_utilization"] <= 1
    for chains in (4, 8):       # a longer KV cache: more attention per token on average
        for w in ("int8", "ternary"):
            assert pts[(chains, w, 256)]["throughput"] < pts[(chains, w, 64)]["throughput"]
    # the TLMM engine is built only for the ternary points
    assert pts[(4, "ternary", 64)]["dsp"] > pts[(4, "int8", 64)]["dsp"]


@pytest.mark.slow
def test_verify_decoder_point(tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text("parameters:\n  chains: [4]\n  chain_len: [8]\n  weights: [int8]\n")
    code = main(["dse", "--example", "tiny-llama", "--board", "u280", "--space", str(space),
                 "-o", str(tmp_path / "o"), "--jobs", "1", "--verify", "1"])
    assert code == 0
    v = json.loads((tmp_path / "o" / "verify.json").read_text())[0]
    assert v["verified"] and v["bit_exact"]
    assert all(abs(e) < 0.1 for e in v["cycle_error"].values())
    assert "BIT-EXACT at max context 16" in capsys.readouterr().out


def test_verify_refuses_a_full_size_decoder(tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text("parameters:\n  chains: [16]\n")
    code = main(["dse", str(ROOT / "examples" / "configs" / "llama-2-7b.json"), "--board",
                 "u280", "--space", str(space), "-o", str(tmp_path / "o"), "--jobs", "1",
                 "--verify", "1"])
    assert code == 0
    assert ("refused: a llama-2-7b-sized decoder is too large to simulate in RTL"
            in capsys.readouterr().out)
    assert not (tmp_path / "o" / "verify").exists()


def test_a_study_of_another_sweep_is_refused(local_sweep, tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text("parameters:\n  chains: [4, 8]\n")
    code = main(["dse", "--example", "mlp", "--board", "u280", "--space", str(space),
                 "-o", str(tmp_path / "o"), "--study", str(local_sweep / "study.db")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "holds another sweep (its space differ); use another --study or -o" in err[0]
    assert not (tmp_path / "o").exists()          # refused before anything is written


@pytest.mark.parametrize("flags, needle", [
    (["--sampler", "random"], "--sampler random: use grid or nsga2"),
    (["--jobs", "0"], "--jobs 0: must be >= 1"),
])
def test_bad_flags(tmp_path, capsys, flags, needle):
    code = main(["dse", "--example", "mlp", "--board", "u280", "--space", str(SMALL),
                 "-o", str(tmp_path / "o"), *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [f"hwflow: error: {needle}"]
