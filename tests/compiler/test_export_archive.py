"""Crafted torch.export archives: nothing stored in an untrusted archive runs.

Every hostile archive here carries a payload that would create a file (``PWNED``) if any of
its bytes were unpickled or executed; each test checks that the file never appears, whether
the compile then succeeds (the payload sits in a member hwflow does not need) or is refused
(the payload sits in a member it would need), and that the refusal names the member.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest
import torch

from hwflow.compiler import FrontendError, load_model
from hwflow.compiler.export_archive import is_allowed_target, load_exported_program
from tests._cli import assert_no_build_left, assert_one_line_error, run_cli, run_cli_process


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = torch.nn.Linear(32, 64)
        self.fc2 = torch.nn.Linear(64, 16)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


class _Payload:
    """Unpickles (full pickle only) by evaluating ``source``: touches ``flag``, returns
    ``result_source``'s value, so a loader that unpickles it sees valid data."""

    def __init__(self, flag: Path, result_source: str):
        self.code = (f"(__import__('pathlib').Path({str(flag)!r}).touch(), "
                     f"{result_source})[1]")

    def __reduce__(self):
        return eval, (self.code,)


def _saved(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _archive(path: Path, model=None, example=None) -> Path:
    model = model or Tiny()
    example = example if example is not None else (torch.randn(4, 32),)
    torch.export.save(torch.export.export(model.eval(), example), str(path))
    return path


def _rewrite(src: Path, dst: Path, edit) -> Path:
    """Copy the zip ``src`` to ``dst``; ``edit(members)`` changes the dict name -> bytes."""
    with zipfile.ZipFile(src) as zf:
        members = {i.filename: zf.read(i) for i in zf.infolist()}
    edit(members)
    with zipfile.ZipFile(dst, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return dst


def _member(members: dict, suffix: str) -> str:
    (name,) = [n for n in members if n.endswith(suffix)]
    return name


@pytest.fixture
def flag(tmp_path):
    f = tmp_path / "PWNED"
    yield f
    assert not f.exists(), "a payload in the archive was executed"


@pytest.fixture
def clean(tmp_path):
    return _archive(tmp_path / "clean.pt2")


def _with_pickled_sample_inputs(clean, dst, flag):
    payload = _saved(_Payload(flag, "((__import__('torch').randn(4, 32),), {})"))
    return _rewrite(clean, dst, lambda m: m.update(
        {_member(m, "data/sample_inputs/model.pt"): payload}))


def test_sample_inputs_are_never_unpickled_and_the_compile_succeeds(capfd, tmp_path, clean,
                                                                      flag):
    # torch.export.load would run this payload (weights_only=True fails on builtins.eval, then
    # it retries with full pickle) and the compile would succeed: the worst case of the issue.
    bad = _with_pickled_sample_inputs(clean, tmp_path / "model.pt2", flag)
    code, out, err = run_cli(capfd, "compile", bad, "--board", "u280", "-o", tmp_path / "out")
    assert code == 0, err
    assert (tmp_path / "out" / "hwflow-build.json").is_file()
    ref = load_model(clean)
    got = load_model(bad)
    assert sorted(got.nodes) == sorted(ref.nodes)


def test_sample_inputs_payload_in_a_fresh_process(tmp_path, clean, flag):
    """The same archive through the installed CLI in its own process (no test-only state)."""
    bad = _with_pickled_sample_inputs(clean, tmp_path / "model.pt2", flag)
    r = run_cli_process("compile", bad, "--board", "u280", "-o", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""


def _pickled_weight(clean, dst, flag):
    def edit(m):
        cfg_name = _member(m, "data/weights/model_weights_config.json")
        cfg = json.loads(m[cfg_name])
        meta = cfg["config"]["fc1.weight"]
        meta["use_pickle"] = True
        m[_member(m, "data/weights/" + meta["path_name"])] = _saved(
            _Payload(flag, "__import__('torch').randn(64, 32)"))
        m[cfg_name] = json.dumps(cfg).encode()
    return _rewrite(clean, dst, edit)


def _opaque_constant(clean, dst, flag):
    import pickle

    def edit(m):
        cfg_name = _member(m, "data/constants/model_constants_config.json")
        cfg = json.loads(m[cfg_name])
        cfg["config"]["evil"] = {"path_name": "opaque_obj_0", "is_param": False,
                                 "use_pickle": False, "tensor_meta": None}
        top = cfg_name.split("/", 1)[0]
        m[f"{top}/data/constants/opaque_obj_0"] = pickle.dumps(_Payload(flag, "0"))
        m[cfg_name] = json.dumps(cfg).encode()
    return _rewrite(clean, dst, edit)


def _legacy_weights(clean, dst, flag):
    def edit(m):
        top = next(iter(m)).split("/", 1)[0]
        m[f"{top}/data/weights/model.pt"] = _saved(_Payload(flag, "{}"))
    return _rewrite(clean, dst, edit)


def _call_target(target):
    def craft(clean, dst, flag):
        def edit(m):
            name = _member(m, "models/model.json")
            prog = json.loads(m[name])
            node = prog["graph_module"]["graph"]["nodes"][0]
            node["target"] = target
            m[name] = json.dumps(prog).encode()
        return _rewrite(clean, dst, edit)
    return craft


def _custom_obj_argument(clean, dst, flag):
    def edit(m):
        name = _member(m, "models/model.json")
        prog = json.loads(m[name])
        node = prog["graph_module"]["graph"]["nodes"][0]
        node["inputs"].append({"name": "obj", "arg": {"as_custom_obj": {
            "name": "obj0", "class_fqn": "__torch__.torch.classes.evil"}}})
        m[name] = json.dumps(prog).encode()
    return _rewrite(clean, dst, edit)


def _importing_treespec(clean, dst, flag):
    def edit(m):
        name = _member(m, "models/model.json")
        prog = json.loads(m[name])
        sig = prog["graph_module"]["module_call_graph"][0]["signature"]
        context = {"default_factory_module": "os", "default_factory_name": "system",
                   "dict_context": []}
        sig["out_spec"] = json.dumps([1, {"type": "collections.defaultdict",
                                          "context": json.dumps(context),
                                          "children_spec": []}])
        m[name] = json.dumps(prog).encode()
    return _rewrite(clean, dst, edit)


@pytest.mark.parametrize("craft,needles", [
    (_pickled_weight, ["weight 'fc1.weight'", "pickled tensor", "--trust-model"]),
    (_opaque_constant, ["constant 'evil'", "opaque Python object", "opaque_obj_0"]),
    (_legacy_weights, ["data/weights/model.pt", "legacy pickle format"]),
    (_call_target("torch.os.system"), ["calls 'torch.os.system'", "not an ATen operator"]),
    (_call_target("#evil.op"), ["calls '#evil.op'"]),
    (_call_target("torch.ops.higher_order.print"), ["torch.ops.higher_order.print"]),
    (_custom_obj_argument, ["custom object argument"]),
    (_importing_treespec, ["tree spec", "Python module"]),
])
def test_a_member_that_would_run_code_is_refused_by_name(capfd, tmp_path, clean, flag, craft,
                                                         needles):
    bad = craft(clean, tmp_path / "model.pt2", flag)
    code, out, err = run_cli(capfd, "compile", bad, "--board", "u280", "-o", tmp_path / "out")
    assert_one_line_error(code, err, "model.pt2", *needles)
    assert_no_build_left(tmp_path)
    with pytest.raises(FrontendError):
        load_exported_program(bad)


def test_dse_and_the_decoder_path_read_archives_the_same_way(capfd, tmp_path, clean, flag):
    bad = _pickled_weight(clean, tmp_path / "model.pt2", flag)
    space = tmp_path / "space.yaml"
    space.write_text("parameters:\n  chains: [4]\n")
    code, out, err = run_cli(capfd, "dse", bad, "--board", "u280", "--space", space,
                             "--jobs", "1", "-o", tmp_path / "dse")
    assert_one_line_error(code, err, "fc1.weight", "pickled tensor")
    from hwflow.compiler.llm_frontend import load_decoder

    with pytest.raises(FrontendError, match="pickled tensor"):
        load_decoder(bad)


def test_guards_code_is_dropped_not_run(tmp_path, clean, flag):
    """``ExportedProgram.module()`` compiles and runs the program's guards code: the decoder
    frontend calls the module to check the recognised blocks, so the code must be gone."""
    def edit(m):
        name = _member(m, "models/model.json")
        prog = json.loads(m[name])
        prog["guards_code"] = [f"__import__('pathlib').Path({str(flag)!r}).touch() or True"]
        m[name] = json.dumps(prog).encode()
    bad = _rewrite(clean, tmp_path / "model.pt2", edit)
    ep = load_exported_program(bad)
    assert ep._guards_code == []
    x = torch.randn(4, 32)
    assert torch.equal(ep.module()(x), load_exported_program(clean).module()(x))


def test_trust_model_loads_with_torch(tmp_path, clean):
    ep = load_exported_program(clean, trust_model=True)
    assert ep.example_inputs is not None        # torch.export.load reads the sample inputs


@pytest.mark.parametrize("damage,needles", [
    (lambda m: m.pop(_member(m, "models/model.json")), ["not a PyTorch model file"]),
    (lambda m: m.update({_member(m, "models/model.json"): b"{not json"}), ["not valid JSON"]),
    (lambda m: m.update({_member(m, "models/model.json"): b'{"graph_module": {}}'}),
     ["not a valid exported program"]),
    (lambda m: m.update({_member(m, "data/weights/weight_0"): b"\0" * 12}),
     ["declares shape [64, 32]", "weight_0"]),
    (lambda m: m.update({_member(m, "data/weights/weight_0"): b"\0" * 13}),
     ["not a whole number"]),
])
def test_damaged_archive_members_are_named(capfd, tmp_path, clean, damage, needles):
    bad = _rewrite(clean, tmp_path / "model.pt2", damage)
    code, out, err = run_cli(capfd, "compile", bad, "--board", "u280", "-o", tmp_path / "out")
    assert_one_line_error(code, err, *needles)
    assert_no_build_left(tmp_path)


def test_a_fake_archive_with_only_a_model_json(capfd, tmp_path):
    bad = tmp_path / "fake.pt2"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("fake/models/model.json", b'{"hello": "world"}')
    code, out, err = run_cli(capfd, "compile", bad, "--board", "u280", "-o", tmp_path / "out")
    assert_one_line_error(code, err, "fake.pt2", "not an exported program")


def test_enormous_declared_members_are_refused_before_inflating(capfd, tmp_path, clean,
                                                                  monkeypatch):
    import hwflow.compiler.export_archive as ea

    # Pretend the machine has 16 KiB: the 11 KB archive declares more than half of it.
    monkeypatch.setattr(ea, "machine_memory_bytes", lambda: 2**14)
    code, out, err = run_cli(capfd, "compile", clean, "--board", "u280", "-o", tmp_path / "out")
    assert_one_line_error(code, err, "declares", "GiB")


@pytest.mark.parametrize("target,allowed", [
    ("torch.ops.aten.linear.default", True), ("torch.ops.aten.add.Tensor", True),
    ("torch.ops.prims.convert_element_type.default", True), ("_operator.getitem", True),
    ("torch.ops.higher_order.wrap_with_set_grad_enabled", True), ("torch.sym_max", True),
    ("torch.os.system", False), ("torch.load", False), ("builtins.eval", False),
    ("torch.ops.aten.linear.default.extra", False), ("torch.ops.myns.op.default", False),
    ("#ext.op", False), ("_operator.attrgetter", False), ("torch.ops.higher_order.cond", False),
])
def test_allowed_targets(target, allowed):
    assert is_allowed_target(target) is allowed
