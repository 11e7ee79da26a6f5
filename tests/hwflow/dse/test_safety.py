"""hwflow dse with hostile inputs and faults: it writes only into its own folders and studies,
gives one error line for every bad option or environment, and its workers die with it.

Issue "Untrusted model files and faults", items 6 (``-o`` and ``--study`` that hwflow did not
create), 7 and 8 (unwritable or odd paths, bad values) and 11 (``kill -9`` of the driver).
"""

import errno
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hwflow import dse
from hwflow.dse import DSE_MARKER, STUDY_NAME, report, search
from tests._cli import assert_one_line_error, read_only, run_cli, snapshot

ROOT = Path(__file__).resolve().parents[3]
ONE_POINT = "parameters:\n  chains: [4]\n"
#: 72 points: the workers are still busy when the driver is killed
KILL_SPACE = """parameters:
  chains: [2, 4, 8]
  chain_len: [4, 8, 16]
  weights: [int8, int4]
  sparsity: [dense, "2:4"]
  clock_mhz: [250, 300]
"""


@pytest.fixture
def space(tmp_path) -> Path:
    p = tmp_path / "space.yaml"
    p.write_text(ONE_POINT)
    return p


def _dse(capfd, space, out, *flags):
    return run_cli(capfd, "dse", "--example", "mlp", "--board", "u280", "--space", space,
                   "-o", out, "--jobs", "1", *flags)


# ---------------------------------------------------------------- item 6: -o and --study

def _user_folder(p: Path) -> Path:
    p.mkdir()
    (p / "points.csv").write_text("my own table\n")
    (p / "notes.txt").write_text("keep me\n")
    return p


def _compile_build(p: Path) -> Path:
    p.mkdir()
    (p / "hwflow-build.json").write_text("{}\n")
    (p / "config.json").write_text("{}\n")
    return p


def _file(p: Path) -> Path:
    p.write_text("a file\n")
    return p


def _dangling(p: Path) -> Path:
    p.symlink_to(p.parent / "nowhere")
    return p


@pytest.mark.parametrize("make, needle", [
    (_user_folder, "exists and is not an hwflow dse folder (no hwflow-dse.json)"),
    (_compile_build, "exists and is not an hwflow dse folder"),
    (_file, "is a file, not a folder"),
    (_dangling, "is a dangling symbolic link"),
])
def test_an_output_folder_hwflow_did_not_create_is_refused(capfd, tmp_path, space, make,
                                                           needle):
    out = make(tmp_path / "out")
    before = snapshot(tmp_path)
    code, _, err = _dse(capfd, space, out)
    assert_one_line_error(code, err, needle, "choose another output folder with -o")
    assert snapshot(tmp_path) == before


def _text(p: Path) -> None:
    p.write_text("not a database\n")


def _empty(p: Path) -> None:
    p.write_bytes(b"")


def _user_db(p: Path) -> None:
    with sqlite3.connect(p) as c:
        c.execute("CREATE TABLE customers (name TEXT)")
        c.execute("INSERT INTO customers VALUES ('ada')")
    c.close()


def _other_optuna_study(p: Path) -> None:
    import optuna

    storage = optuna.storages.RDBStorage(f"sqlite:///{p}")
    optuna.create_study(storage=storage, study_name="mine")
    storage.engine.dispose()


def _hwflow_study_beside_another(p: Path) -> None:
    """hwflow's study name, but in a storage that also holds the user's study."""
    import optuna

    storage = optuna.storages.RDBStorage(f"sqlite:///{p}")
    optuna.create_study(storage=storage, study_name="mine")
    optuna.create_study(storage=storage, study_name=STUDY_NAME).set_user_attr("sweep", {})
    storage.engine.dispose()


@pytest.mark.parametrize("make, needle", [
    (_text, "is not an SQLite database (hwflow leaves it unchanged)"),
    (_empty, "is not an SQLite database"),
    (_user_db, "is an SQLite database that hwflow did not create (it holds 'customers')"),
    (_other_optuna_study, f"hwflow dse did not create (no '{STUDY_NAME}' study of its own)"),
    (_hwflow_study_beside_another, "hwflow dse did not create"),
])
def test_a_study_file_hwflow_did_not_create_is_refused(capfd, tmp_path, space, make, needle):
    study = tmp_path / "user.db"
    make(study)
    before = snapshot(tmp_path)
    code, _, err = _dse(capfd, space, tmp_path / "out", "--study", study)
    assert_one_line_error(code, err, needle, "--study")
    assert snapshot(tmp_path) == before          # no table added, no output folder


def test_a_study_that_is_a_folder_or_a_dangling_link_is_refused(capfd, tmp_path, space):
    (tmp_path / "dir").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    before = snapshot(tmp_path)
    for name, needle in (("dir", "is not a file"), ("link", "is a dangling symbolic link")):
        code, _, err = _dse(capfd, space, tmp_path / "out", "--study", tmp_path / name)
        assert_one_line_error(code, err, needle)
    assert snapshot(tmp_path) == before


def test_output_folder_is_marked_and_a_new_study_is_hwflows(capfd, tmp_path, space):
    out = tmp_path / "empty"
    out.mkdir()                                   # an empty folder is taken
    code, _, err = _dse(capfd, space, out)
    assert code == 0, err
    assert json.loads((out / DSE_MARKER).read_text())["hwflow"] == "dse"
    assert dse.read_study_sweep(out / "study.db")["model"] == "mlp"
    assert not list(out.glob(".*"))               # no temporary left


def test_a_dse_folder_from_before_the_marker_is_resumed(capfd, tmp_path, space):
    out = tmp_path / "o"
    assert _dse(capfd, space, out)[0] == 0
    (out / DSE_MARKER).unlink()                   # as an earlier hwflow left it
    code, so, err = _dse(capfd, space, out)
    assert code == 0, err
    assert "(0 evaluated now, 1 from the study)" in so
    assert (out / DSE_MARKER).is_file()
    # ... but not once the user has put a file of their own in it
    (out / DSE_MARKER).unlink()
    (out / "notes.txt").write_text("mine\n")
    before = snapshot(out)
    code, _, err = _dse(capfd, space, out)
    assert_one_line_error(code, err, "is not an hwflow dse folder")
    assert snapshot(out) == before


def test_stale_temporaries_of_a_killed_run_are_removed(capfd, tmp_path, space):
    out = tmp_path / "o"
    assert _dse(capfd, space, out)[0] == 0
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = out / f".points.csv.tmp-{dead.pid}"
    stale.write_text("half")
    busy = out / ".points.csv.tmp-1"                # a live process's (init): kept
    busy.write_text("busy")
    assert _dse(capfd, space, out)[0] == 0
    assert not stale.exists() and busy.exists()


# ------------------------------------------------------- items 7, 8: environment and values

@pytest.mark.parametrize("flags, needle", [
    (["--jobs", "-2"], "--jobs -2: must be >= 1"),
    (["--trials", "0"], "--trials 0: must be >= 1"),
    (["--trials", "-5"], "--trials -5: must be >= 1"),
    (["--verify", "-1"], "--verify -1: must be >= 0"),
    (["--sampler", "nsga2", "--seed", str(2**32)], f"--seed {2**32}: must be between 0 and"),
    (["--scheduler", "no-port"], "--scheduler no-port: cannot connect"),
])
def test_bad_options_are_one_line_before_anything_is_written(capfd, tmp_path, space, flags,
                                                             needle):
    code, _, err = _dse(capfd, space, tmp_path / "out", *flags)
    assert_one_line_error(code, err, needle)
    assert not (tmp_path / "out").exists()


def test_an_output_folder_that_cannot_be_created_is_one_line(capfd, tmp_path, space):
    (tmp_path / "file").write_text("x\n")
    before = snapshot(tmp_path)
    code, _, err = _dse(capfd, space, tmp_path / "file" / "out")
    assert_one_line_error(code, err, "cannot write", "Not a directory", "-o")
    assert snapshot(tmp_path) == before


def test_long_paths(capfd, tmp_path, space):
    # a long but legal output name works ...
    out = tmp_path / ("o" * 255)
    code, _, err = _dse(capfd, space, out)
    assert code == 0, err
    # ... a study path longer than SQLite opens is one line, before anything is written
    study = tmp_path / ("s" * 200) / ("s" * 200) / ("s" * 200) / "study.db"
    code, _, err = _dse(capfd, space, tmp_path / "o2", "--study", study)
    assert_one_line_error(code, err, "bytes, longer than SQLite opens (504)")
    assert not (tmp_path / "o2").exists() and not (tmp_path / ("s" * 200)).exists()


def test_a_read_only_parent_is_one_line(capfd, tmp_path, space):
    ro = tmp_path / "ro"
    ro.mkdir()
    with read_only(ro):
        code, _, err = _dse(capfd, space, ro / "out")
    assert_one_line_error(code, err, "cannot write")
    assert not (ro / "out").exists()


@pytest.mark.parametrize("where", ["outputs", "study"])
def test_a_full_disk_mid_sweep_is_one_line_that_says_how_to_resume(capfd, tmp_path, space,
                                                                   monkeypatch, where):
    if where == "outputs":
        write = report._atomic_write

        def fail(path, data):
            if path.name != "points.csv":         # the marker is written before the sweep
                return write(path, data)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        monkeypatch.setattr(report, "_atomic_write", fail)
        needle = "No space left on device"
    else:
        def fail(*a, **k):
            raise sqlite3.OperationalError("database or disk is full")
        monkeypatch.setattr(search, "_tell", fail)
        needle = "the study cannot be written (database or disk is full)"
    code, _, err = _dse(capfd, space, tmp_path / "out")
    assert_one_line_error(code, err, needle, "run the same command again to resume")


# ---------------------------------------------------------- item 11: workers die with it

def _children(pid: int) -> list:
    """Pids whose parent is ``pid`` (from /proc)."""
    kids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
                kids.append(int(d.name))
    return kids


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's exit may wait for a reaper)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def _stored(study: Path) -> int:
    try:
        with sqlite3.connect(study.resolve().as_uri() + "?mode=ro", uri=True, timeout=1) as c:
            return c.execute("SELECT count(*) FROM trial_user_attributes WHERE key = ?",
                             (dse.RESULT_ATTR,)).fetchone()[0]
    except sqlite3.Error:
        return 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_kill_9_of_the_driver_takes_its_workers_down(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(KILL_SPACE)
    out = tmp_path / "o"
    proc = subprocess.Popen([sys.executable, "-m", "hwflow.cli", "dse", "--example", "mlp",
                             "--board", "u280", "--space", str(space), "--jobs", "2",
                             "-o", str(out)], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    workers = []
    try:
        deadline = time.monotonic() + 180
        # the workers are evaluating: points are being stored
        while _stored(out / "study.db") < 1 and proc.poll() is None:
            assert time.monotonic() < deadline, "no point stored in 180 s"
            time.sleep(0.05)
        assert proc.poll() is None, "the sweep finished before it could be killed"
        workers = _children(proc.pid)
        assert len(workers) >= 2, workers
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    try:
        deadline = time.monotonic() + 10
        while any(map(_running, workers)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [p for p in workers if _running(p)], "workers outlived their driver"
    finally:
        for p in workers:                 # never leave them behind, whatever the result
            if _running(p):
                os.kill(p, signal.SIGKILL)
