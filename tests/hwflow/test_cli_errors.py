"""Bad input: one clear line on stderr, exit status 2, no traceback, nothing written."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hwflow.cli import main


class Conv(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.conv(x)


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(x)


def _run(capsys, *argv):
    code = main(list(argv))
    err = capsys.readouterr().err
    return code, err


def _one_line_error(code, err, *needles):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("hwflow: error: ")
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]


def test_missing_file(capsys, tmp_path):
    code, err = _run(capsys, "compile", str(tmp_path / "nope.pt"), "--board", "u280",
                     "-o", str(tmp_path / "out"))
    _one_line_error(code, err, "nope.pt")
    assert not (tmp_path / "out").exists()


def test_not_a_model(capsys, tmp_path):
    f = tmp_path / "model.pt"
    f.write_text("hello, I am a text file\n")
    code, err = _run(capsys, "compile", str(f), "--board", "u280", "-o", str(tmp_path / "out"))
    _one_line_error(code, err, "model.pt")
    assert not (tmp_path / "out").exists()


def test_pickled_module_needs_trust(capsys, tmp_path):
    f = tmp_path / "model.pt"
    torch.save(Tiny(), f)
    code, err = _run(capsys, "compile", str(f), "--board", "u280", "-o", str(tmp_path / "out"))
    _one_line_error(code, err, "--trust-model")
    assert not (tmp_path / "out").exists()


def test_unsupported_op_names_it(capsys, tmp_path):
    f = tmp_path / "conv.pt"
    torch.export.save(torch.export.export(Conv(), (torch.randn(1, 3, 8, 8),)), str(f))
    code, err = _run(capsys, "compile", str(f), "--board", "u280", "-o", str(tmp_path / "out"))
    _one_line_error(code, err, "conv2d", "test_cli_errors.py")
    assert not (tmp_path / "out").exists()


def test_unknown_board(capsys, tmp_path):
    code, err = _run(capsys, "compile", "--example", "mlp", "--board", "zynq9000",
                     "-o", str(tmp_path / "out"))
    _one_line_error(code, err, "zynq9000", "u280")


def test_output_folder_that_is_not_a_build_is_kept(capsys, tmp_path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.tex").write_text("do not lose me")
    code, err = _run(capsys, "compile", "--example", "mlp", "--board", "u280", "-o", str(out))
    _one_line_error(code, err, "not an hwflow build folder")
    assert (out / "thesis.tex").read_text() == "do not lose me"


def test_sim_of_a_folder_that_is_not_a_build(capsys, tmp_path):
    code, err = _run(capsys, "sim", str(tmp_path))
    _one_line_error(code, err, str(tmp_path))


@pytest.mark.parametrize("argv", [["boards"]])
def test_console_script_runs(argv):
    r = subprocess.run([sys.executable, "-m", "hwflow.cli", *argv], capture_output=True,
                       text=True, check=True)
    assert "u280" in r.stdout and "kv260" in r.stdout


@pytest.mark.parametrize("flag,value,needles", [
    ("--sparsity", "3:4", ["--sparsity 3:4", "M/N must be a power of two", "2:4"]),
    ("--sparsity", "2:32", ["--sparsity 2:32", "M must be a power of two up to 16"]),
    ("--sparsity", "5:4", ["--sparsity 5:4", "N must be between 1 and M"]),
    ("--sparsity", "half", ["--sparsity half", "auto, dense or N:M"]),
    ("--weights", "int2", ["--weights int2", "int8, int4, mixed"]),
    ("--weights", "fp16", ["--weights fp16", "int8, int4, mixed"]),
])
def test_bad_weight_format_options(capsys, tmp_path, flag, value, needles):
    out = tmp_path / "out"
    code, err = _run(capsys, "compile", "--example", "mlp", "--board", "u280", "-o", str(out),
                     flag, value)
    _one_line_error(code, err, *needles)
    assert not out.exists()


# --------------------------------------------------------- values and options that were ignored

@pytest.fixture(scope="module")
def llm_build(tmp_path_factory):
    out = tmp_path_factory.mktemp("llm") / "tiny-llama"
    assert main(["compile", "--example", "tiny-llama", "--board", "u280", "--max-context", "64",
                 "-o", str(out)]) == 0
    return out


@pytest.mark.parametrize("argv,needles", [
    (["--seed", "-1"], ["--seed", "non-negative"]),
    (["--seed", "x"], ["--seed", "not an integer"]),
    (["--new-tokens", "0"], ["--new-tokens 0", "at least 1"]),
    (["--prompt-len", "1000000000"], ["--prompt-len 1000000000", "max context of 64"]),
    (["--prompt-len", "0"], ["--prompt-len 0"]),
])
def test_bad_sim_values_of_a_language_model(capfd, llm_build, argv, needles):
    from tests._cli import assert_one_line_error, run_cli, snapshot

    before = snapshot(llm_build)
    code, out, err = run_cli(capfd, "sim", llm_build, *argv)
    assert_one_line_error(code, err, *needles)
    assert snapshot(llm_build) == before


@pytest.mark.parametrize("argv,needles", [
    (["--example", "mlp", "--max-context", "64"], ["--max-context is for language models",
                                                   "--example mlp is an MLP"]),
    (["--example", "mlp", "--lm-head", "int4"], ["--lm-head is for language models"]),
    (["--example", "tiny-llama", "--lm-head", "int2"], ["--lm-head", "invalid choice: 'int2'"]),
    (["--example", "tiny-llama", "--weights", "int2"],
     ["--weights int2: a decoder takes int8, int4, mixed, ternary"]),
    (["--example", "tiny-llama", "--rows", "3"], ["--rows is for MLP models"]),
    (["--example", "tiny-llama", "--sparsity", "2:4"], ["--sparsity is for MLP models"]),
    (["--example", "tiny-llama", "--calib", "x.npy"], ["--calib is for MLP models"]),
    ([str(Path(__file__).parents[2] / "examples/configs/llama-2-7b.json"), "--shape-only",
      "--save-ir"],
     ["--save-ir is not read by a --shape-only compile"]),
])
def test_options_a_compile_would_ignore_are_refused(capfd, tmp_path, argv, needles):
    from tests._cli import assert_one_line_error, run_cli

    code, out, err = run_cli(capfd, "compile", *argv, "--board", "u280", "-o", tmp_path / "o")
    assert_one_line_error(code, err, *needles)
    assert not (tmp_path / "o").exists()
