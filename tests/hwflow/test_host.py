"""The host API: a build runs through ModelDevice exactly like the golden interpreter."""

import builtins
import json

import numpy as np
import pytest

from hwflow.compiler import load_graph, run
from hwflow.errors import HwflowError
from hwflow.flow import compile_model
from hwflow.host import (
    AP_DONE,
    Device,
    ModelDevice,
    PynqDevice,
    XrtDevice,
    _PortedDevice,
    join_ports,
    load_build,
    split_ports,
)
from hwflow.host import run as host_run
from hwflow.hw.axi_lite import REG
from hwflow.hw.config import AccelConfig
from hwflow.hw.vitis_kernel import mem_arg_offset


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    out, _ = compile_model(example="mlp", board="u280", out=tmp_path_factory.mktemp("b") / "mlp")
    return out


def test_model_device_matches_golden_exactly(build):
    b = load_build(build)
    graph = load_graph(build / "ir" / "final")
    shape = b.input_shape(b.input)
    for seed in (0, 1):
        x = np.random.default_rng(seed).standard_normal(shape) * 2
        dev = ModelDevice(b.cfg)
        assert isinstance(dev, Device)
        stats = {}
        got = host_run(b, {b.input: x}, dev, stats=stats)
        want = run(graph, {b.input: x})
        assert list(got) == list(want)
        for name in want:
            assert got[name].dtype == np.float64
            assert np.array_equal(got[name], want[name]), name
        assert dev.read_reg(REG["AP_CTRL"]) & AP_DONE
        assert stats["retired"] == dev.stats.retired > 0


def test_run_accepts_a_path_and_checks_inputs(build):
    conf = json.loads((build / "config.json").read_text())
    cfg = AccelConfig(**conf["accel"])
    b = load_build(build)
    x = np.zeros(b.input_shape(b.input))
    out = host_run(build, {conf["input"]: x}, ModelDevice(cfg))
    assert set(out) == set(conf["outputs"])
    with pytest.raises(HwflowError, match="takes one input"):
        host_run(build, {"nope": x}, ModelDevice(cfg))
    with pytest.raises(HwflowError, match="compiled for"):
        host_run(build, {conf["input"]: np.zeros((1, 3))}, ModelDevice(cfg))
    with pytest.raises(HwflowError, match="not an hwflow build folder"):
        load_build(build / "rtl")


class _FakeBoard(_PortedDevice):
    """The board backends' striping over ports, on plain per-port bytearrays."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.regs, self.model = {}, ModelDevice(cfg)

    def _alloc(self, j, nbytes):
        return bytearray(nbytes), 0x1_0000_0000 * (j + 1)

    def _buf_write(self, buf, offset, data):
        buf[offset: offset + len(data)] = data

    def _buf_read(self, buf, offset, n):
        return bytes(buf[offset: offset + n])

    def write_reg(self, offset, value):
        self.regs[offset] = value
        if offset == REG["AP_CTRL"] and value & 1:
            # what the ports hold, joined again, is what the accelerator sees
            W = self.cfg.port_bytes
            n = len(self.bufs[0]) // W
            flat = join_ports([np.frombuffer(bytes(b), np.uint8).reshape(n, W)
                               for b in self.bufs])
            self.model.reserve(len(flat))
            self.model.write_mem(0, flat)
            self.model.write_reg(REG["PROG_BASE"], self.regs[REG["PROG_BASE"]])
            self.model.write_reg(REG["AP_CTRL"], 1)
            for j, beats in enumerate(split_ports(bytes(self.model.mem), self.cfg.mem_ports, W)):
                self.bufs[j][:] = beats.tobytes()

    def read_reg(self, offset):
        return self.model.read_reg(offset)


def test_striped_backend_matches_golden(build):
    b = load_build(build)
    assert b.cfg.mem_ports == 8
    dev = _FakeBoard(b.cfg)
    x = np.random.default_rng(3).standard_normal(b.input_shape(b.input))
    got = host_run(b, {b.input: x}, dev)
    want = run(b.graph, {b.input: x})
    assert all(np.array_equal(got[k], want[k]) for k in want)
    # port j's 64-bit base address went to its register pair
    assert dev.regs[mem_arg_offset(3)] == 0 and dev.regs[mem_arg_offset(3) + 4] == 4
    assert mem_arg_offset(3) == 0x30 + 8 * 3


@pytest.mark.parametrize("cls, module", [(XrtDevice, "pyxrt"), (PynqDevice, "pynq")])
def test_missing_runtime_is_one_line(monkeypatch, cls, module):
    real_import = builtins.__import__

    def fake_import(name, *a, **k):
        if name == module:
            raise ImportError(f"No module named '{module}'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(HwflowError) as e:
        cls("x.bin", AccelConfig())
    assert module in str(e.value) and "\n" not in str(e.value)


@pytest.fixture(scope="module")
def llama_build(tmp_path_factory):
    from hwflow.cli import main

    out = tmp_path_factory.mktemp("llm") / "tiny-llama"
    assert main(["compile", "--example", "tiny-llama", "--board", "u280",
                 "--max-context", "32", "-o", str(out)]) == 0
    return out


def _decoder_of(build_dir):
    from hwflow.compiler.decoder_io import load_saved_decoder

    conf = json.loads((build_dir / "config.json").read_text())
    return AccelConfig(**conf["accel"]), load_saved_decoder(build_dir / "decoder" / "quantized")


def test_generate_matches_golden_run_by_run(llama_build):
    from hwflow.compiler.llm_interpret import golden_generate
    from hwflow.host import generate

    cfg, qd = _decoder_of(llama_build)
    prompt, new = [3, 17, 250, 9, 64], 3
    dev = ModelDevice(cfg)
    got = generate(dev, llama_build, prompt, new)
    want = golden_generate(qd, prompt, new + 1)
    assert got["tokens"] == want.tokens and len(got["tokens"]) == new + 1
    # 5 tokens, shorter than the smallest bucket (8): token by token on the decode program (a
    # run's logits are its last row's), then one run per decode step
    want_rows = list(want.step_logits[0]) + [s[0] for s in want.step_logits[1:]]
    assert len(got["logits"]) == len(got["cycles"]) == len(prompt) + new == len(want_rows)
    for run_logits, row in zip(got["logits"], want_rows, strict=True):
        assert run_logits.dtype == np.int8
        assert np.array_equal(run_logits, row)
    assert dev.read_reg(REG["POS"]) == len(prompt) + new - 1  # the last decode step's position

    # a prompt longer than the largest bucket (16): 16 rows at POS 0, then the 8-row bucket
    # ending on the last prompt token (POS 11)
    long_prompt = list(range(1, 20))
    dev = ModelDevice(cfg)
    got = generate(dev, llama_build, long_prompt, 2)
    want = golden_generate(qd, long_prompt, 3)
    assert got["tokens"] == want.tokens
    assert np.array_equal(got["logits"][1], want.step_logits[0][18])
    assert [lg.shape for lg in got["logits"]] == [(qd.shape.vocab,)] * 4


def test_generate_rejects_other_builds_and_bad_prompts(build, llama_build):
    from hwflow.host import generate

    cfg, _ = _decoder_of(llama_build)
    with pytest.raises(HwflowError, match="not a decoder build"):
        generate(ModelDevice(cfg), build, [1], 1)
    with pytest.raises(HwflowError, match="outside the vocabulary"):
        generate(ModelDevice(cfg), llama_build, [100000], 1)
    with pytest.raises(HwflowError, match="max_context"):
        generate(ModelDevice(cfg), llama_build, [1] * 30, 5)


def test_host_run_example_generates(llama_build, capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "examples" / "host_run.py"
    spec = importlib.util.spec_from_file_location("host_run_example", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main([str(llama_build), "--prompt", "1,2,3", "--new-tokens", "2"]) == 0
    out = capsys.readouterr().out
    assert "tokens [" in out and "cycles per run" in out
    assert mod.main([str(llama_build), "--new-tokens", "1"]) == 0  # seeded prompt of 8
