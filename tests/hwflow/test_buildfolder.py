"""Build folders (hwflow/buildfolder.py): the manifest checked by sim, predict and bitstream;
the output folder claimed before the work (name, permissions, lock), written atomically, its
symlink kept, a killed run's leftovers cleaned (issue 13: items 4, 7, 13).

The damaged-build cases are refused before any simulation or synthesis, so they are fast; the
builds come from two module fixtures (``--example mlp`` for u280, a shape-only LLaMA-2-7B).
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from hwflow.boards import BOARD_DIR
from hwflow.buildfolder import (
    MARKER,
    BuildOutput,
    atomic_build_dir,
    build_kind,
    is_build,
    open_build,
)
from hwflow.errors import HwflowError
from tests._cli import (
    assert_no_build_left,
    assert_one_line_error,
    read_only,
    run_cli,
    snapshot,
)

LLAMA_7B = Path(__file__).resolve().parents[2] / "examples" / "configs" / "llama-2-7b.json"
MLP_REBUILD = "rebuild with `hwflow compile --example mlp --board u280 -o "


@pytest.fixture(scope="module")
def mlp_build(tmp_path_factory):
    from hwflow.flow import compile_model

    out, _ = compile_model(example="mlp", board="u280",
                           out=tmp_path_factory.mktemp("mlp") / "mlp")
    return out


@pytest.fixture(scope="module")
def shape_build(tmp_path_factory):
    from hwflow.llm_flow import compile_shape_only

    out, _ = compile_shape_only(model=str(LLAMA_7B), board="u280",
                                out=tmp_path_factory.mktemp("shape") / "llama")
    return out


def _copy(build: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "b"
    shutil.copytree(build, dest)
    return dest


def _damage(path: Path, how: str) -> None:
    if how == "random":                   # same size: only the digest can tell
        path.write_bytes(os.urandom(path.stat().st_size))
    elif how == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path.unlink()


def _fake_small_build(out: Path, text: str = "one") -> None:
    """A tiny build folder written the way compile writes one (marker with the manifest)."""
    with atomic_build_dir(out, {"kind": "mlp"}, rebuild="hwflow compile x.pt2 --board u280") \
            as tmp:
        (tmp / "config.json").write_text(json.dumps({"board": "u280", "text": text}))
        (tmp / "program.bin").write_bytes(text.encode() * 10)


# -- the manifest ---------------------------------------------------------------------------

def test_manifest_records_every_file_compile_wrote(mlp_build, shape_build):
    for build in (mlp_build, shape_build):
        marker = json.loads((build / MARKER).read_text())
        on_disk = {p.relative_to(build).as_posix() for p in build.rglob("*") if p.is_file()}
        on_disk -= {MARKER, "reports/predict.json"}        # predict.json: rewritten by predict
        assert set(marker["files"]) == on_disk
        assert marker["rebuild"].startswith("hwflow compile ")
        for rel, rec in marker["files"].items():
            assert rec["size"] == (build / rel).stat().st_size
    assert open_build(mlp_build)["board"] == "u280"
    assert build_kind(mlp_build) == "mlp" and build_kind(shape_build) == "decoder"


MLP_FILES = ["program.bin", "memory_image.bin", "config.json", "memory_map.json", "calib.npy",
             "rtl/hwflow_accel.v", "ir/final.npz", "ir/float.json", "reports/compile.json",
             "tb/test_accel.py"]


@pytest.mark.parametrize("how", ["random", "truncate", "delete"])
@pytest.mark.parametrize("rel", MLP_FILES)
@pytest.mark.parametrize("command", ["sim", "bitstream"])
def test_damaged_mlp_build_is_refused(mlp_build, tmp_path, capfd, command, rel, how):
    out = _copy(mlp_build, tmp_path)
    _damage(out / rel, how)
    before = snapshot(out)
    code, _, err = run_cli(capfd, command, out)
    line = assert_one_line_error(code, err, rel)
    assert ("missing" if how == "delete" else "damaged") in line
    assert MLP_REBUILD + f"{out}`" in line
    assert snapshot(out) == before                # nothing written into a damaged build


def test_missing_rtl_folder_is_named(mlp_build, tmp_path, capfd):
    out = _copy(mlp_build, tmp_path)
    shutil.rmtree(out / "rtl")
    for command in ("sim", "bitstream"):
        code, _, err = run_cli(capfd, command, out)
        assert_one_line_error(code, err, "rtl/hwflow_accel.v is missing", MLP_REBUILD)


@pytest.mark.parametrize("rel", ["config.json", "memory_map.json", "programs/decode.bin",
                                 "programs/prefill8.bin", "reports/compile.json"])
@pytest.mark.parametrize("how", ["random", "truncate", "delete"])
def test_damaged_decoder_build_is_refused_by_predict(shape_build, tmp_path, capfd, rel, how):
    out = _copy(shape_build, tmp_path)
    _damage(out / rel, how)
    code, _, err = run_cli(capfd, "predict", out)
    assert_one_line_error(code, err, rel, "rebuild with `hwflow compile ",
                          f"llama-2-7b.json --shape-only --board u280 -o {out}`")


def test_damaged_decoder_build_is_refused_by_sim(shape_build, tmp_path, capfd):
    """simulate_decoder checks the build before it looks at what kind it is."""
    out = _copy(shape_build, tmp_path)
    _damage(out / "programs" / "decode.bin", "random")
    code, _, err = run_cli(capfd, "sim", out)
    assert_one_line_error(code, err, "programs/decode.bin is damaged")


def test_an_intact_build_opens(mlp_build, shape_build, capfd):
    from hwflow.simulate import check_isa_model

    assert check_isa_model(mlp_build)             # sim's reading of the build, without RTL
    code, _, err = run_cli(capfd, "bitstream", shape_build)
    assert_one_line_error(code, err, "shape-only build")


def test_files_written_after_compile_may_change(mlp_build, tmp_path):
    out = _copy(mlp_build, tmp_path)
    for rel in ("reports/sim.json", "reports/predict.json", "reports/utilization.json",
                "reports/timing.json", "sim/obj/Vtop", "bitstream/x.bit", "vitis/Makefile",
                "tb/__pycache__/test_accel.cpython-311.pyc"):
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text("written later")
    assert open_build(out)["board"] == "u280"


def test_build_of_an_older_hwflow_is_refused(mlp_build, tmp_path, capfd):
    out = _copy(mlp_build, tmp_path)
    (out / MARKER).write_text(json.dumps({"hwflow_build": 1, "digest": "0123456789abcdef"}))
    for command in ("sim", "bitstream"):
        code, _, err = run_cli(capfd, command, out)
        assert_one_line_error(code, err, "older hwflow", "recompile", f"-o {out}")


@pytest.mark.parametrize("how", ["random", "truncate", "edited"])
def test_damaged_marker_is_refused(mlp_build, tmp_path, capfd, how):
    out = _copy(mlp_build, tmp_path)
    marker = out / MARKER
    if how == "edited":                   # valid JSON, a digest changed by hand
        data = json.loads(marker.read_text())
        data["files"]["program.bin"]["sha256"] = "0" * 64
        marker.write_text(json.dumps(data))
    else:
        _damage(marker, how)
    code, _, err = run_cli(capfd, "bitstream", out)
    assert_one_line_error(code, err, f"{MARKER} is damaged", "rebuild with")


def test_manifest_entries_stay_inside_the_folder(tmp_path):
    out = tmp_path / "b"
    _fake_small_build(out)
    data = json.loads((out / MARKER).read_text())
    data["files"] = {"../outside": {"sha256": "0" * 64, "size": 1}}
    from hwflow.buildfolder import _table_digest

    data["files_sha256"] = _table_digest(data["files"])
    (out / MARKER).write_text(json.dumps(data))
    with pytest.raises(HwflowError, match="is damaged"):
        open_build(out)


def test_a_folder_that_is_not_a_build(tmp_path, capfd):
    for command in ("sim", "predict", "bitstream"):
        code, _, err = run_cli(capfd, command, tmp_path)
        assert_one_line_error(code, err, "not an hwflow build folder", str(tmp_path))


# -- claiming and writing the output folder (fast: tiny fake builds) --------------------------

def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_killed_runs_leftovers_are_cleaned(tmp_path):
    out = tmp_path / "o"
    dead = _dead_pid()
    (tmp_path / f".o.tmp-{dead}").mkdir()
    (tmp_path / f".o.tmp-{dead}" / "half.bin").write_bytes(b"x")
    (tmp_path / f".o.old-{dead}").mkdir()
    (tmp_path / ".o.lock").write_text(f"{dead}\n")        # flock died with its process
    live = tmp_path / f".o.tmp-{os.getppid()}"               # a live run's: kept
    live.mkdir()
    (tmp_path / f".other.tmp-{dead}").mkdir()               # another folder's: not ours
    _fake_small_build(out)
    assert is_build(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["o", live.name, f".other.tmp-{dead}"])


def test_a_build_set_aside_by_a_killed_run_is_put_back(tmp_path):
    """Killed between `OUT -> .OUT.old-PID` and `.OUT.tmp-PID -> OUT`: the next run restores
    the previous build first, so a run that then fails loses nothing."""
    out = tmp_path / "o"
    _fake_small_build(out, "previous")
    old = tmp_path / f".o.old-{_dead_pid()}"
    out.rename(old)
    with pytest.raises(HwflowError, match="bad input"), BuildOutput(out):
        raise HwflowError("bad input")
    assert json.loads((out / "config.json").read_text())["text"] == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]


def test_a_second_writer_is_refused_while_the_first_holds_the_folder(tmp_path):
    out = tmp_path / "o"
    with BuildOutput(out) as first:
        before = snapshot(tmp_path)
        with pytest.raises(HwflowError, match=rf"another hwflow \(pid {os.getpid()}\) is "
                                              "writing"), BuildOutput(out):
            pass
        assert snapshot(tmp_path) == before               # the first one's files untouched
        with first.writing({"kind": "mlp"}) as tmp:
            (tmp / "config.json").write_text("{}")
    assert is_build(out) and sorted(p.name for p in tmp_path.iterdir()) == ["o"]


def test_a_symlinked_output_is_followed_and_kept(tmp_path):
    real = tmp_path / "disk" / "real"
    _fake_small_build(real, "one")
    link = tmp_path / "link"
    link.symlink_to(real)
    _fake_small_build(link, "two")
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert json.loads((real / "config.json").read_text())["text"] == "two"
    assert open_build(link)["text"] == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["disk", "link"]
    assert sorted(p.name for p in (tmp_path / "disk").iterdir()) == ["real"]


def test_a_symlink_to_a_foreign_folder_is_refused(tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("keep")
    (tmp_path / "link").symlink_to(precious)
    before = snapshot(tmp_path)
    with pytest.raises(HwflowError, match="not an hwflow build folder"):
        _fake_small_build(tmp_path / "link")
    assert snapshot(tmp_path) == before


def test_a_long_legal_output_name(tmp_path):
    name = "b" * 255                       # NAME_MAX: legal, but `.NAME.tmp-PID` would not be
    _fake_small_build(tmp_path / name)
    _fake_small_build(tmp_path / name, "again")
    assert open_build(tmp_path / name)["text"] == "again"
    assert [p.name for p in tmp_path.iterdir()] == [name]
    with pytest.raises(HwflowError, match="256 bytes long, the file system allows 255"):
        _fake_small_build(tmp_path / ("b" * 256))


def test_parent_folders_made_for_a_failed_run_are_removed(tmp_path):
    with pytest.raises(HwflowError, match="bad input"), BuildOutput(tmp_path / "a" / "b" / "o"):
        raise HwflowError("bad input")
    assert list(tmp_path.iterdir()) == []


# -- the CLI: environment faults, one line each, before the long work ------------------------

@pytest.fixture
def no_long_work(monkeypatch):
    """Compile must refuse before the model is read (the flow takes seconds to minutes)."""
    import hwflow.flow
    import hwflow.llm_flow

    def started(*a, **k):
        raise AssertionError("the long work started before the output folder was checked")

    def first_long_step(steps, name):
        return tuple((n, started if n == name else f) for n, f in steps)

    monkeypatch.setattr(hwflow.flow, "run_steps", started)
    monkeypatch.setattr(hwflow.llm_flow, "DECODER_STEPS",
                        first_long_step(hwflow.llm_flow.DECODER_STEPS, "load"))
    # a shape-only compile reads the config (it names the folder) before claiming the folder
    monkeypatch.setattr(hwflow.llm_flow, "SHAPE_STEPS",
                        first_long_step(hwflow.llm_flow.SHAPE_STEPS, "lower"))


@pytest.mark.parametrize("source", [["--example", "mlp"], ["--example", "tiny-llama"],
                                    [LLAMA_7B, "--shape-only"]],
                         ids=["mlp", "decoder", "shape-only"])
def test_unwritable_output_location(tmp_path, capfd, no_long_work, source):
    parent = tmp_path / "ro"
    parent.mkdir()
    with read_only(parent):
        code, _, err = run_cli(capfd, "compile", *source, "--board", "u280", "-o", parent / "o")
        assert_one_line_error(code, err, f"cannot write '{parent / 'o'}'", "-o")
    assert list(parent.iterdir()) == []


def test_a_previous_build_that_cannot_be_replaced(mlp_build, tmp_path, capfd, no_long_work):
    out = _copy(mlp_build, tmp_path)
    before = snapshot(tmp_path)
    with read_only(out):
        code, _, err = run_cli(capfd, "compile", "--example", "mlp", "--board", "u280",
                               "-o", out)
        assert_one_line_error(code, err, f"'{out}' holds a build that cannot be replaced")
    assert snapshot(tmp_path) == before


def test_dangling_symlink_output(tmp_path, capfd, no_long_work):
    link = tmp_path / "o"
    link.symlink_to(tmp_path / "gone")
    code, _, err = run_cli(capfd, "compile", "--example", "mlp", "--board", "u280", "-o", link)
    assert_one_line_error(code, err, "symbolic link", "does not exist")
    assert link.is_symlink() and sorted(p.name for p in tmp_path.iterdir()) == ["o"]


def test_too_long_output_name(tmp_path, capfd, no_long_work):
    code, _, err = run_cli(capfd, "compile", "--example", "mlp", "--board", "u280",
                           "-o", tmp_path / ("o" * 300))
    assert_one_line_error(code, err, "300 bytes long")
    assert list(tmp_path.iterdir()) == []


def test_disk_full_while_writing(mlp_build, tmp_path, capfd, monkeypatch):
    out = _copy(mlp_build, tmp_path)                 # the previous build must survive
    before = snapshot(tmp_path)
    write_bytes = pathlib.Path.write_bytes

    def full(self, data):
        if self.name == "memory_image.bin":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return write_bytes(self, data)

    monkeypatch.setattr(pathlib.Path, "write_bytes", full)
    code, _, err = run_cli(capfd, "compile", "--example", "mlp", "--board", "u280", "-o", out)
    assert_one_line_error(code, err, f"cannot write '{out}'", "No space left on device",
                          "free some space")
    assert snapshot(tmp_path) == before


def test_memory_image_larger_than_the_board_is_refused_at_compile(tmp_path, capfd):
    boards = tmp_path / "boards"
    boards.mkdir()
    data = yaml.safe_load((BOARD_DIR / "u280.yaml").read_text())
    data.update(name="u280-small")
    data["memory"]["capacity_gb"] = 0.00001          # 10 kB; the mlp image is ~57 kB
    (boards / "u280-small.yaml").write_text(yaml.safe_dump(data))
    code, _, err = run_cli(capfd, "--boards-dir", boards, "compile", "--example", "mlp",
                           "--board", "u280-small", "-o", tmp_path / "o")
    assert_one_line_error(code, err, "memory image does not fit u280-small", "B > 10000 B",
                          "needed > available")
    assert_no_build_left(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["boards"]


def test_concurrent_compile_is_refused_and_a_killed_one_is_cleaned(tmp_path, capfd):
    """A real second process: while it compiles into OUT, a compile to the same OUT fails at
    once with one line; killed (-9) it leaves its staging folder, which the next compile to
    OUT removes."""
    out = tmp_path / "o"
    first = subprocess.Popen([sys.executable, "-m", "hwflow.cli", "compile", "--example", "mlp",
                              "--board", "u280", "-o", str(out)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        # its staging folder appears once it holds the lock (polling the lock itself could
        # take it for a moment and make the first run fail)
        while not (tmp_path / f".o.tmp-{first.pid}").is_dir():
            assert first.poll() is None, first.stderr.read()
            assert time.monotonic() < deadline, "the first compile never took the lock"
            time.sleep(0.02)
        code, _, err = run_cli(capfd, "compile", "--example", "mlp", "--board", "u280",
                               "-o", out)
        assert_one_line_error(code, err, f"another hwflow (pid {first.pid}) is writing '{out}'")
    finally:
        first.kill()
        first.wait()
    assert (tmp_path / f".o.tmp-{first.pid}").is_dir() and not is_build(out)
    code, _, err = run_cli(capfd, "compile", "--example", "mlp", "--board", "u280", "-o", out)
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]
    assert open_build(out)["board"] == "u280"
