"""hwflow.dse.space: the space file; bad files are one error line through the CLI."""

import pytest

from hwflow.cli import main
from hwflow.dse.space import DECODER, MLP, parse_space
from hwflow.errors import HwflowError


def _dse(capsys, tmp_path, text, *model, board="u280"):
    space = tmp_path / "space.yaml"
    space.write_text(text)
    args = list(model) or ["--example", "mlp"]
    code = main(["dse", *args, "--board", board, "--space", str(space),
                 "-o", str(tmp_path / "out"), "--jobs", "1"])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("hwflow: error: space.yaml: "), err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()        # nothing written
    return lines[0]


def test_unknown_parameter_named_with_the_known_ones(capsys, tmp_path):
    line = _dse(capsys, tmp_path, "parameters:\n  chians: [4, 8]\n")
    assert "unknown parameter 'chians'" in line
    assert "known: chains, chain_len, mem_ports" in line and "sparsity" in line


@pytest.mark.parametrize("spec, needle", [
    ("{min: 8, max: 4}", "empty range (min 8 > max 4)"),
    ("[]", "empty list of values"),
    ("{values: []}", "empty list of values"),
])
def test_empty_range(capsys, tmp_path, spec, needle):
    line = _dse(capsys, tmp_path, f"parameters:\n  chains: {spec}\n")
    assert "parameter 'chains'" in line and needle in line


@pytest.mark.parametrize("text, needle", [
    ("chains: [4, big]", "value 'big' is a string, expected an integer"),
    ("chains: [4.5]", "value 4.5 is a number, expected an integer"),
    ("clock_mhz: [fast]", "value 'fast' is a string, expected a number"),
    ("weights: [int3]", "value 'int3' is not one of int8, int4, mixed, ternary"),
    ("sparsity: ['3:4']", "parameter 'sparsity': value '3:4'"),
    ("chains: {min: 2, max: 8, step: two}", "step 'two' is a string, expected a number"),
])
def test_wrong_type(capsys, tmp_path, text, needle):
    line = _dse(capsys, tmp_path, f"parameters:\n  {text}\n")
    assert needle in line


def test_parameter_that_does_not_apply_to_a_decoder(capsys, tmp_path):
    line = _dse(capsys, tmp_path, "parameters:\n  sparsity: ['2:4']\n", "--example",
                "tiny-llama")
    assert "parameter 'sparsity' does not apply to a decoder model" in line
    line = _dse(capsys, tmp_path, "parameters:\n  weights: [int2]\n", "--example", "tiny-llama")
    assert "value 'int2' is not one of int8, int4, mixed, ternary (for a decoder model)" in line
    line = _dse(capsys, tmp_path, "parameters:\n  attn_heads: [4]\n")      # the MLP example
    assert "parameter 'attn_heads' does not apply to a mlp model" in line


def test_infeasible_for_the_board_names_resource_and_shortfall(capsys, tmp_path):
    # 96 x 16 = 1536 DSP48E2 in the matrix engine alone: the KV260 has 1248
    line = _dse(capsys, tmp_path, "parameters:\n  chains: [128, 96]\n  chain_len: [16]\n",
                board="kv260")
    assert "infeasible for the board kv260: no point fits" in line
    assert "the smallest (chains=96, chain_len=16) needs " in line
    assert "DSP 1," in line and "> 1,248 (by " in line and "over)" in line


def test_bad_objective_and_constraint(capsys, tmp_path):
    line = _dse(capsys, tmp_path, "parameters:\n  chains: [4]\nobjectives:\n  speed: max\n")
    assert "objective 'speed' is not a metric (known: throughput" in line
    line = _dse(capsys, tmp_path, "parameters:\n  chains: [4]\nobjectives:\n  throughput: up\n")
    assert "direction 'up' must be max or min" in line
    line = _dse(capsys, tmp_path, "parameters:\n  chains: [4]\nconstraints:\n  dsp: 5\n")
    assert "constraint 'dsp': expected {max: NUMBER}" in line


def test_not_a_space(capsys, tmp_path):
    line = _dse(capsys, tmp_path, "- 1\n- 2\n")
    assert "expected a YAML mapping with 'parameters'" in line
    line = _dse(capsys, tmp_path, "parameters: {}\n")
    assert "'parameters' must be a non-empty mapping" in line
    line = _dse(capsys, tmp_path, "parameters:\n  chains: [4]\nsearch: grid\n")
    assert "unknown section 'search'" in line


def test_ranges_expand():
    s = parse_space({"parameters": {"chains": {"min": 2, "max": 32, "factor": 2},
                                    "act_depth": {"min": 1024, "max": 4096, "step": 1024},
                                    "clock_mhz": {"min": 200, "max": 300, "step": 50},
                                    "weights": {"values": ["int8", "int4"]},
                                    "sparsity": "dense"}}, MLP)
    assert s.parameters == {"chains": [2, 4, 8, 16, 32], "act_depth": [1024, 2048, 3072, 4096],
                            "clock_mhz": [200, 250, 300], "weights": ["int8", "int4"],
                            "sparsity": ["dense"]}
    assert s.size == 5 * 4 * 3 * 2
    pts = list(s.points())
    assert [i for i, _ in pts] == list(range(s.size))
    assert all(s.point_id(p) == i for i, p in pts)
    assert s.objectives == {"throughput": "max", "resource_fraction": "min"}


def test_decoder_parameters():
    s = parse_space({"parameters": {"max_context": [512, 1024], "weights": ["ternary"]}},
                    DECODER)
    assert s.size == 2
    with pytest.raises(HwflowError, match="max_context' does not apply to a mlp model"):
        parse_space({"parameters": {"max_context": [512]}}, MLP)


def test_example_spaces_are_valid():
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[3] / "examples" / "dse"
    big = parse_space(yaml.safe_load((root / "space.yaml").read_text()), DECODER)
    assert big.size >= 200
    assert parse_space(yaml.safe_load((root / "mlp.yaml").read_text()), MLP).size >= 200
    assert parse_space(yaml.safe_load((root / "mlp-small.yaml").read_text()), MLP).size == 12


@pytest.mark.parametrize("text, needle", [
    ("chains: {min: 1, max: .inf}", "parameter 'chains': max inf must be a finite number"),
    ("chains: {min: .nan, max: 4}", "parameter 'chains': min nan must be a finite number"),
    ("chains: {min: 1, max: 4, factor: .inf}", "factor inf must be a finite number"),
    ("chains: {min: 1, max: 4, step: .nan}", "step nan must be a finite number"),
    ("chains: {min: null, max: 4}", "min None is a null, expected a number"),
    # 10**9 values: refused before they are listed (this used to run until killed)
    ("clock_mhz: {min: 1, max: 1.0e+300, factor: 1.0000001}", "more than 1,000,000 values"),
    ("clock_mhz: {min: 0.0, max: 1.0e+300, step: 1.0e-300}", "more than 1,000,000 values"),
])
def test_ranges_that_are_not_finite(capsys, tmp_path, text, needle):
    assert needle in _dse(capsys, tmp_path, f"parameters:\n  {text}\n")


@pytest.mark.parametrize("text, needle", [
    ("parameters:\n  chains: [4]\nobjectives: [[throughput]]\n", "objective '['throughput']' "
     "is not a metric"),
    ("parameters:\n  chains: [4]\nobjectives: {throughput: [max]}\n", "direction ['max'] must "
     "be max or min"),
    ("parameters:\n  chains: [4]\nconstraints: {dsp: {max: .nan}}\n", "constraint 'dsp': "
     "expected {max: NUMBER}"),
    ("parameters:\n  chains: [4]\n1: 2\nfoo: 3\n", "unknown section '1'"),
    ("parameters:\n  chains: {min: 1, max: 4, 7: 1}\n", "a range is {min, max} with an "
     "optional step or factor (got 7, max, min)"),
    ("parameters:\n  chains: " + "[" * 5000 + "]" * 5000 + "\n", "not valid YAML"),
    ("parameters: [\n", "not valid YAML"),
])
def test_wrong_structure(capsys, tmp_path, text, needle):
    assert needle in _dse(capsys, tmp_path, text)


def test_a_space_file_that_is_not_utf8_or_not_a_file(capsys, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_bytes(b"parameters:\n  chains: [4]\n# \xff\xfe\n")
    code = main(["dse", "--example", "mlp", "--board", "u280", "--space", str(space),
                 "-o", str(tmp_path / "out"), "--jobs", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == ["hwflow: error: space.yaml: not UTF-8 text (byte 0xff at "
                                 "offset 28); a space file is YAML"]
    code = main(["dse", "--example", "mlp", "--board", "u280", "--space", str(tmp_path),
                 "-o", str(tmp_path / "out"), "--jobs", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "is a folder; pass the YAML space file" in err[0]
    assert not (tmp_path / "out").exists()
