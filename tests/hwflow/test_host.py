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


def test_split_join_round_trip():
    img = bytes(range(256)) * 3
    ports = split_ports(img, 4, 16)
    assert ports.shape == (4, 12, 16)
    assert bytes(ports[1, 0]) == img[16:32]
    assert join_ports(list(ports)) == img


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
