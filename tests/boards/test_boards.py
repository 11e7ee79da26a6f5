import pytest
import yaml

from hwflow.boards import BoardError, list_boards, load_board


def test_bundled_boards_have_real_figures():
    u280 = load_board("u280")
    assert u280.part.startswith("xcu280")
    assert u280.resources["dsp"] == 9024 and u280.memory["channels"] == 32
    kv260 = load_board("kv260")
    assert kv260.resources["dsp"] == 1248 and kv260.memory["type"] == "ddr4"
    assert {"u280", "kv260"} <= {b.name for b in list_boards()}


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
