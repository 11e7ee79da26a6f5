"""Board files: the bundled boards, user folders, and the schema every board file must meet
(issue "Untrusted model files and faults", items 8-10 and 13)."""

from pathlib import Path

import pytest
import yaml

from hwflow.boards import (
    BOARD_DIR,
    CROSS_RULES,
    FLOWS,
    RESOURCE_KINDS,
    SCHEMA,
    BoardError,
    board_dirs,
    list_boards,
    load_board,
    schema_markdown,
)
from tests._cli import assert_one_line_error, run_cli


def test_bundled_boards_have_real_figures():
    u280 = load_board("u280")
    assert u280.part.startswith("xcu280")
    assert u280.resources["dsp"] == 9024 and u280.memory["channels"] == 32
    kv260 = load_board("kv260")
    assert kv260.resources["dsp"] == 1248 and kv260.memory["type"] == "ddr4"
    assert {"u280", "kv260"} <= {b.name for b in list_boards()}


def test_memory_ports_share_the_channels_they_are_wired_to():
    # the U280: a port per HBM pseudo-channel, each holding a 32nd of the HBM
    u280 = load_board("u280")
    assert u280.max_mem_ports == 32
    assert u280.port_capacity_bytes(8) == u280.port_capacity_bytes(32) == 8_590_000_000 // 32
    # the KV260: four S_AXI_HP ports on one DDR4 controller, each holding a quarter of it
    kv260 = load_board("kv260")
    assert kv260.max_mem_ports == 4 and kv260.memory["channels"] == 1
    assert kv260.port_capacity_bytes(1) == 4_000_000_000
    assert kv260.port_capacity_bytes(4) == 1_000_000_000


def test_unknown_board_names_the_known_ones():
    with pytest.raises(BoardError, match="unknown board 'nope'.*u280"):
        load_board("nope")


def _write(d, name, data):
    (d / f"{name}.yaml").write_text(yaml.safe_dump(data))


def test_user_board_folder(tmp_path, monkeypatch):
    data = yaml.safe_load(open(load_board("kv260").path))
    data["name"] = "myboard"
    _write(tmp_path, "myboard", data)
    assert load_board("myboard", tmp_path).resources["dsp"] == 1248
    monkeypatch.setenv("HWFLOW_BOARDS", str(tmp_path))
    assert "myboard" in {b.name for b in list_boards()}


def test_boards_dir_before_or_after_the_subcommand(tmp_path, capfd, monkeypatch):
    monkeypatch.delenv("HWFLOW_BOARDS", raising=False)
    data = yaml.safe_load(open(load_board("kv260").path))
    data["name"] = "myboard"
    _write(tmp_path, "myboard", data)
    for args in (("--boards-dir", tmp_path, "boards"), ("boards", "--boards-dir", tmp_path)):
        code, out, err = run_cli(capfd, *args)
        assert code == 0 and "myboard" in out, (args, err)
    code, out, _ = run_cli(capfd, "boards")
    assert code == 0 and "myboard" not in out
    bad = tmp_path / "nowhere"
    code, _, err = run_cli(capfd, "boards", "--boards-dir", bad)
    assert_one_line_error(code, err, "--boards-dir", str(bad), "does not exist")


@pytest.mark.parametrize("mutate,field", [
    (lambda d: d.pop("part"), "part"),
    (lambda d: d["resources"].update(dsp=-1), "resources.dsp"),
    (lambda d: d["memory"].update(channels="many"), "memory.channels"),
    (lambda d: d["clocks"].update(kernel_mhz=0), "clocks.kernel_mhz"),
    (lambda d: d["engine"].update(chainz=4), "engine.chainz"),
    (lambda d: d["engine"].update(sparse="no"), "engine.sparse"),
    (lambda d: d["engine"].update(chains=True), "engine.chains"),
])
def test_invalid_yaml_names_the_field(tmp_path, mutate, field):
    data = yaml.safe_load(open(load_board("u280").path))
    data["name"] = "bad"
    mutate(data)
    _write(tmp_path, "bad", data)
    with pytest.raises(BoardError, match=field.replace(".", r"\.")):
        load_board("bad", tmp_path)


def test_not_yaml(tmp_path):
    (tmp_path / "bad.yaml").write_text("name: [unclosed\n")
    with pytest.raises(BoardError, match="not valid YAML"):
        load_board("bad", tmp_path)


def test_engine_feature_flags_are_board_data():
    ice = load_board("icebreaker")
    assert ice.engine["sparse"] is False and ice.engine["int4"] is False


# ---------------------------------------------------------------- schema: every field, one line
#
# Issue "Untrusted model files and faults", items 8-10 and 13: every bad board file is refused
# by load_board and by the CLI with one line naming the file, the field, the bad value, the
# rule and the unit.

BUNDLED = sorted(p.stem for p in BOARD_DIR.glob("*.yaml"))


def _bundled(name):
    return yaml.safe_load((BOARD_DIR / f"{name}.yaml").read_text())


def _set(path, value):
    """A mutation setting dotted ``path`` to ``value`` (``...`` deletes it)."""
    def mutate(d):
        *parents, key = path.split(".")
        for p in parents:
            d = d[p]
        if value is ...:
            del d[key]
        else:
            d[key] = value
    return mutate


# (base board, mutation, fragments the one error line holds)
BROKEN = {
    "capacity-string": ("u280", _set("memory.capacity_gb", "eight"),
                        ["memory.capacity_gb must be a positive number (GB), got 'eight'"]),
    "capacity-negative": ("u280", _set("memory.capacity_gb", -1),
                          ["memory.capacity_gb", "positive number (GB)", "got -1"]),
    "capacity-missing": ("u280", _set("memory.capacity_gb", ...),
                         ["memory.capacity_gb is missing", "positive number (GB)"]),
    "capacity-null": ("u280", _set("memory.capacity_gb", None), ["memory.capacity_gb is missing"]),
    "capacity-inf": ("u280", _set("memory.capacity_gb", float("inf")),
                     ["memory.capacity_gb", "(GB)", "got inf"]),
    "capacity-nan": ("u280", _set("memory.capacity_gb", float("nan")),
                     ["memory.capacity_gb", "got nan"]),
    "capacity-bool": ("u280", _set("memory.capacity_gb", True), ["capacity_gb", "got true"]),
    "capacity-1e-6-is-text": ("u280", _set("memory.capacity_gb", "1e-6"),
                              ["capacity_gb", "got '1e-6'", "write it with a dot"]),
    "bandwidth-zero": ("u280", _set("memory.bandwidth_gbps", 0),
                       ["memory.bandwidth_gbps", "positive number (GB/s)", "got 0"]),
    "port-not-power-of-two": ("u280", _set("memory.port_bytes", 24),
                              ["memory.port_bytes", "power of two", "(B)", "got 24"]),
    "port-too-wide": ("u280", _set("memory.port_bytes", 256), ["memory.port_bytes", "got 256"]),
    "port-zero": ("u280", _set("memory.port_bytes", 0), ["memory.port_bytes", "got 0"]),
    "channels-float": ("u280", _set("memory.channels", 2.5),
                       ["memory.channels", "positive integer (channels)", "got 2.5"]),
    "channels-zero": ("u280", _set("memory.channels", 0), ["memory.channels", "got 0"]),
    "memory-type": ("u280", _set("memory.type", "sram"),
                    ["memory.type", "one of hbm2", "got 'sram'"]),
    "memory-list": ("u280", _set("memory", [1, 2]), ["memory must be a mapping", "got a list"]),
    "memory-unknown-key": ("u280", _set("memory.capacity_GB", 8),
                           ["unknown field 'memory.capacity_GB'", "did you mean 'capacity_gb'"]),
    "lut-zero": ("u280", _set("resources.lut", 0),
                 ["resources.lut", "positive integer (LUTs)", "got 0"]),
    "dsp-string": ("u280", _set("resources.dsp", "1k"),
                   ["resources.dsp", "non-negative integer (DSP slices)", "got '1k'"]),
    "uram-missing": ("u280", _set("resources.uram", ...), ["resources.uram is missing"]),
    "resources-typo": ("u280", _set("resources.luts", 5), ["unknown field 'resources.luts'"]),
    "clock-huge": ("u280", _set("clocks.kernel_mhz", 300e6),
                   ["clocks.kernel_mhz", "at most 1000 (MHz)", "got 300000000.0"]),
    "capacity-inf-text": ("u280", _set("memory.capacity_gb", "inf"),
                          ["memory.capacity_gb must be a positive number (GB), got 'inf'"]),
    "clock-text": ("u280", _set("clocks.kernel_mhz", "300MHz"),
                   ["clocks.kernel_mhz", "(MHz)", "got '300MHz'"]),
    "clocks-missing": ("u280", _set("clocks", ...), ["clocks is missing"]),
    "top-level-typo": ("u280", _set("clock", {"kernel_mhz": 1}),
                       ["unknown field 'clock'", "did you mean 'clocks'"]),
    "vendor": ("u280", _set("vendor", "amd"), ["vendor must be one of xilinx, lattice",
                                                "got 'amd'"]),
    "family": ("u280", _set("family", "spartan7"), ["family must be one of", "got 'spartan7'"]),
    "flow": ("u280", _set("flow", "quartus"), ["flow must be one of vitis", "got 'quartus'"]),
    "part-tcl": ("u280", _set("part", "xcu280; exec rm -rf ~"), ["part must be a part number"]),
    "description-empty": ("u280", _set("description", " "), ["description must be a non-empty"]),
    "name-not-file-name": ("u280", _set("name", "other"),
                           ["name must equal the file name 'bad'", "got 'other'"]),
    "name-int": ("u280", _set("name", 280), ["name must be", "got 280"]),
    "bram-kbits-text": ("u280", _set("bram_kbits", "36"), ["bram_kbits", "(Kb)", "got '36'"]),
    "bram-kbits-vs-flow": ("u280", _set("bram_kbits", 18),
                           ["bram_kbits must be 36 (Kb) for the vitis flow", "got 18"]),
    "vendor-vs-flow": ("u280", _set("vendor", "lattice"),
                       ["vendor must be 'xilinx' for the vitis flow", "got 'lattice'"]),
    "family-vs-flow": ("vck190", _set("family", "virtex-ultrascale-plus"),
                       ["family must be one of zynq-ultrascale-plus", "vivado flow"]),
    "bram-memory-vs-xilinx": ("u280", _set("memory.type", "bram"),
                              ["memory.type must be external memory", "vitis flow"]),
    "ddr-vs-open-flow": ("ulx3s", _set("memory.type", "ddr4"),
                         ["memory.type must be 'bram' for the ecp5 flow", "got 'ddr4'"]),
    "platform-missing": ("ulx3s", _set("platform", ...),
                         ["platform ('amaranth_boards.MODULE:Class') is required", "ecp5"]),
    "platform-not-amaranth-boards": ("ulx3s", _set("platform", "os:system"),
                                     ["platform must be 'amaranth_boards.MODULE:Class'",
                                      "got 'os:system'"]),
    "speed-grade-int": ("ulx3s", _set("speed_grade", 6), ["speed_grade must be", "got 6"]),
    "chain-len": ("u280", _set("engine.chain_len", 12),
                  ["engine.chain_len must be a power of two (DSP slices)", "got 12"]),
    "tlmm-g": ("u280", _set("engine.tlmm_g", 5), ["engine.tlmm_g must be one of 2, 3, 4",
                                                    "got 5"]),
    "act-depth-zero": ("u280", _set("engine.act_depth", 0), ["engine.act_depth", "got 0"]),
    "mem-ports-over-ports": ("u280", _set("engine.mem_ports", 64),
                             ["engine.mem_ports must be at most memory.ports (32)", "got 64"]),
    "kv260-mem-ports-over-hp-ports": ("kv260", _set("engine.mem_ports", 8),
                                      ["engine.mem_ports must be at most memory.ports (4)",
                                       "got 8"]),
    "ports-not-channel-multiple": ("u280", _set("memory.ports", 48),
                                   ["memory.ports must be a multiple of memory.channels (32)",
                                    "got 48"]),
    "ports-zero": ("kv260", _set("memory.ports", 0), ["memory.ports", "got 0"]),
    "engine-list": ("u280", _set("engine", ["chains"]), ["engine must be a mapping"]),
    "engine-flag-int": ("u280", _set("engine.tlmm", 1), ["engine.tlmm must be true or false",
                                                          "got 1"]),
}

# raw bytes of a board file that is not a YAML mapping at all (issue item 8)
BROKEN_TEXT = {
    "not-utf8": (b"name: \xff\xfe\n", ["not UTF-8 text", "byte 0xff at offset 6"]),
    "latin1": ("description: Kr\u00f6te\n".encode("latin-1"), ["not UTF-8 text"]),
    "empty": (b"", ["the file is empty", "YAML mapping"]),
    "only-a-comment": (b"# nothing yet\n", ["the file is empty"]),
    "list": (b"- name: bad\n- part: x\n", ["holds a list", "YAML mapping"]),
    "scalar": (b"just some text\n", ["holds a single value ('just some text')", "YAML mapping"]),
    "number": (b"42\n", ["holds a single value (42)"]),
    "unclosed": (b"name: [unclosed\n", ["not valid YAML at line 2, column 1"]),
    "tab-indent": (b"memory:\n\ttype: ddr4\n", ["not valid YAML at line 2"]),
    "two-documents": (b"name: a\n---\nname: b\n", ["not valid YAML", "single document"]),
    "duplicate-key": (b"name: bad\nflow: vitis\nflow: ecp5\n",
                      ["not valid YAML at line 3", "field 'flow' is given twice"]),
    "python-tag": (b"name: !!python/object/apply:os.getcwd []\n",
                   ["not valid YAML", "python/object/apply:os.getcwd"]),
    "too-large": (b"# " + b"x" * (1 << 20) + b"\n", ["too large for a board file"]),
}


def _write_mutated(d: Path, base: str, mutate) -> Path:
    data = _bundled(base)
    data["name"] = "bad"
    mutate(data)
    p = d / "bad.yaml"
    p.write_text(yaml.safe_dump(data, allow_unicode=True))
    return p


def _check_line(msg: str, fragments):
    assert "\n" not in msg and "bad.yaml" in msg, msg
    for f in fragments:
        assert f in msg, f"{f!r} not in {msg!r}"


@pytest.mark.parametrize("base,mutate,fragments", BROKEN.values(), ids=BROKEN.keys())
def test_broken_field_is_one_line(tmp_path, capfd, base, mutate, fragments):
    _write_mutated(tmp_path, base, mutate)
    with pytest.raises(BoardError) as e:
        load_board("bad", tmp_path)
    _check_line(str(e.value), fragments)
    # and the same line through the CLI: `hwflow --boards-dir DIR boards`
    code, out, err = run_cli(capfd, "--boards-dir", tmp_path, "boards")
    assert_one_line_error(code, err, "bad.yaml", *fragments)
    assert out == ""


@pytest.mark.parametrize("raw,fragments", BROKEN_TEXT.values(), ids=BROKEN_TEXT.keys())
def test_broken_file_is_one_line(tmp_path, capfd, raw, fragments):
    (tmp_path / "bad.yaml").write_bytes(raw)
    with pytest.raises(BoardError) as e:
        load_board("bad", tmp_path)
    _check_line(str(e.value), fragments)
    code, _, err = run_cli(capfd, "--boards-dir", tmp_path, "boards")
    assert_one_line_error(code, err, "bad.yaml", *fragments)


def test_python_tag_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "bad.yaml").write_text(
        f"name: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(BoardError, match="not valid YAML"):
        load_board("bad", tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize("name", BUNDLED)
def test_every_bundled_board_passes_the_schema(name):
    b = load_board(name)
    assert b.name == name and b.flow in FLOWS and b.capacity_bytes > 0
    assert b.bram_kbits == FLOWS[b.flow].bram_kbits
    assert set(b.resources) == set(RESOURCE_KINDS)


def test_schema_documents_every_bundled_field():
    doc = schema_markdown()
    paths = {f.path for f in SCHEMA}
    for name in BUNDLED:
        data = _bundled(name)
        for key, v in data.items():
            assert key in paths
            for sub in (v if isinstance(v, dict) else {}):
                assert f"{key}.{sub}" in paths
    for f in SCHEMA:
        assert f"| `{f.path}` | {f.kind} |" in doc
        assert f.rule and f.doc and (f.required or f.default), f.path
    for r in CROSS_RULES:
        assert r.text in doc


def test_schema_families_are_known_to_the_export():
    # the Xilinx families a board may name are the ones the resource estimate can synthesize
    from hwflow.export.fit import YOSYS_FAMILY

    for flow in ("vitis", "vivado"):
        assert set(FLOWS[flow].families) <= set(YOSYS_FAMILY), flow


def test_capacity_is_decimal_gigabytes():
    assert load_board("ulx3s").capacity_bytes == 131_000           # 0.000131 GB
    assert load_board("u280").capacity_bytes == 8_590_000_000      # 8.59 GB: 8 GiB of HBM2


def test_optional_fields_may_be_null_and_bram_kbits_follows_the_flow(tmp_path):
    data = _bundled("ulx3s")
    data.update(name="mine", package=None, speed_grade=None, engine=None, bram_kbits=None)
    _write(tmp_path, "mine", data)
    b = load_board("mine", tmp_path)
    assert b.bram_kbits == 18 and b.package == "" and b.engine == {}
    data = _bundled("icebreaker")
    data["name"] = "mine2"
    del data["bram_kbits"]
    _write(tmp_path, "mine2", data)
    assert load_board("mine2", tmp_path).bram_kbits == 4


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_boards_dir_that_is_not_a_folder_is_refused(tmp_path, capfd, monkeypatch, kind):
    monkeypatch.delenv("HWFLOW_BOARDS", raising=False)
    bad = tmp_path / "nowhere"
    if kind == "file":
        bad.write_text("name: x\n")
    what = "does not exist" if kind == "missing" else "is not a folder"
    with pytest.raises(BoardError, match=what):
        load_board("u280", bad)
    code, _, err = run_cli(capfd, "--boards-dir", bad, "boards")
    assert_one_line_error(code, err, "--boards-dir", str(bad), what)
    monkeypatch.setenv("HWFLOW_BOARDS", str(bad))
    code, _, err = run_cli(capfd, "boards")
    assert_one_line_error(code, err, "$HWFLOW_BOARDS", str(bad), what)


def test_user_board_may_not_redefine_a_bundled_one(tmp_path, capfd, monkeypatch):
    # refused rather than used as an override: a build records only the board's name, so a
    # later `predict` / `bitstream` without --boards-dir would silently use the bundled figures
    monkeypatch.delenv("HWFLOW_BOARDS", raising=False)
    data = _bundled("u280")
    data["clocks"]["kernel_mhz"] = 100
    _write(tmp_path, "u280", data)
    with pytest.raises(BoardError, match=r"board 'u280' is defined twice: .*\(bundled\); give "
                                         r"yours another name.*'u280-custom'"):
        load_board("u280", tmp_path)
    code, _, err = run_cli(capfd, "--boards-dir", tmp_path, "boards")
    assert_one_line_error(code, err, "defined twice", "u280-custom")


def test_same_name_in_two_user_folders_is_refused(tmp_path, monkeypatch):
    data = _bundled("kv260")
    data["name"] = "mine"
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        _write(tmp_path / d, "mine", data)
    monkeypatch.setenv("HWFLOW_BOARDS", str(tmp_path / "b"))
    with pytest.raises(BoardError, match="board 'mine' is defined twice"):
        load_board("mine", tmp_path / "a")
    assert load_board("kv260", tmp_path / "a").name == "kv260"    # other names still load


def test_one_folder_named_twice_is_not_a_collision(tmp_path, monkeypatch):
    data = _bundled("kv260")
    data["name"] = "mine"
    _write(tmp_path, "mine", data)
    monkeypatch.setenv("HWFLOW_BOARDS", str(tmp_path))
    assert load_board("mine", tmp_path).name == "mine"
    assert load_board("u280", BOARD_DIR).name == "u280"        # the bundled folder itself
    assert board_dirs(tmp_path) == [tmp_path, BOARD_DIR]


def test_unknown_board_lists_the_known_ones_through_the_cli(tmp_path, capfd, monkeypatch):
    monkeypatch.delenv("HWFLOW_BOARDS", raising=False)
    # a broken file in the folder does not hide the real problem (the name is unknown)
    (tmp_path / "broken.yaml").write_bytes(b"\xff")
    with pytest.raises(BoardError) as e:
        load_board("u28", tmp_path)
    msg = str(e.value)
    assert "unknown board 'u28'" in msg and "did you mean 'u280'" in msg
    assert all(n in msg for n in BUNDLED) and "broken" in msg and "--boards-dir" in msg
    code, _, err = run_cli(capfd, "--boards-dir", tmp_path, "compile", "--example", "mlp",
                           "--board", "u28", "-o", tmp_path / "out")
    assert_one_line_error(code, err, "unknown board 'u28'", "did you mean 'u280'", *BUNDLED)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["../boards/u280", "u280/../u280", "", " u280", None, 5])
def test_board_name_is_never_a_path(name):
    with pytest.raises(BoardError, match="unknown board"):
        load_board(name)


def test_port_rate_is_the_delivered_bandwidth_a_channel_gives_a_port():
    """Bytes per kernel cycle one port gets: the delivered bandwidth over the channels (or the
    ports sharing them), at most the port's width; the memory simulation and the cycle model
    take this integer."""
    u280, kv260 = load_board("u280"), load_board("kv260")
    # 425 GB/s over 32 pseudo-channels at 300 MHz: 44.3 B a cycle a channel
    assert u280.max_port_bytes == 64
    assert [u280.port_rate_bytes(p, w) for p, w in ((8, 32), (32, 32), (32, 64))] == [32, 32, 44]
    assert u280.port_rate_bytes(32, 64, clock_mhz=450) == 29
    # 19.2 GB/s shared by the four HP ports at 250 MHz: 19.2 B a cycle each, 76.8 for one
    assert kv260.max_port_bytes == 16
    assert (kv260.port_rate_bytes(4, 16), kv260.port_rate_bytes(1, 128)) == (16, 76)
    assert load_board("ulx3s").port_rate_bytes(1, 8) == 8        # 0.56 GB/s at 70 MHz: 8.0


def test_max_port_bytes_is_at_least_port_bytes(tmp_path):
    data = _bundled("u280")
    data.update(name="mine")
    data["memory"]["max_port_bytes"] = 16
    _write(tmp_path, "mine", data)
    with pytest.raises(BoardError, match="memory.max_port_bytes must be at least "
                                         "memory.port_bytes"):
        load_board("mine", tmp_path)
