"""hwflow.predict and ``hwflow compile --shape-only`` / ``hwflow predict``: full-size decoders
from their configs alone (LLaMA-2-7B on the U280, BitNet b1.58 0.7B on the KV260) and bad
inputs (the traffic count: tests/mapping/test_traffic.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hwflow.cli import main
from hwflow.mapping.llm_lower import lower_decoder
from hwflow.predict import load_shape

CONFIGS = Path(__file__).resolve().parents[2] / "examples" / "configs"


def test_load_shape_of_examples_and_configs():
    s, fam, tern = load_shape("tiny-bitnet")
    assert (s.hidden, s.layers, fam, tern) == (120, 2, "bitnet", True)
    s, fam, tern = load_shape(str(CONFIGS / "llama-2-7b.json"))
    assert (s.hidden, s.layers, fam, tern) == (4096, 32, "llama", False)


# --------------------------------------------------------------- full-size, shape only

def _compile(capsys, config: str, board: str, out: Path, *extra) -> tuple[dict, dict, str]:
    code = main(["compile", str(CONFIGS / config), "--shape-only", "--board", board,
                 "-o", str(out), *extra])
    text = capsys.readouterr().out
    assert code == 0, text
    for f in ("config.json", "memory_map.json", "reports/compile.json", "reports/predict.json",
              "programs/decode.bin"):
        assert (out / f).is_file(), f
    assert not (out / "memory_image.bin").exists() and not (out / "rtl").exists()
    rep = json.loads((out / "reports" / "compile.json").read_text())
    pred = json.loads((out / "reports" / "predict.json").read_text())
    assert "tokens/s" in text and "time to first token" in text and "GB/s" in text
    return rep, pred, text


def _check_common(pred: dict, rep: dict, out: Path, capsys) -> None:
    d, b = pred["decode"], pred["bandwidth"]
    assert d["tokens_per_s"] > 0 and d["cycles_per_token"] > 0
    assert d["cycles_last"] >= d["cycles_first"]          # a longer context is not faster
    ttft = [pred["prefill"][str(n)]["ttft_ms"] for n in (64, 128, 512)]
    assert all(t > 0 for t in ttft) and ttft[0] < ttft[1] < ttft[2]
    assert 0 < b["utilization"] <= 1.0 and b["achieved_gbps"] > 0
    assert b["port_peak_gbps"] == pytest.approx(pred["config"]["mem_ports"]
                                                * pred["config"]["port_bytes"]
                                                * pred["clock_mhz"] / 1e3)
    assert pred["memory"]["image_bytes"] == rep["memory_image_bytes"]
    # the decode program on disk is the one predicted: one 32-byte instruction each
    n_instr = len((out / "programs" / "decode.bin").read_bytes()) // 32
    assert n_instr * 32 == rep["programs"]["decode"]["bytes"]
    # hwflow predict recomputes the same figures from the build folder
    assert main(["predict", str(out), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["decode"] == pred["decode"] and again["prefill"] == pred["prefill"]
    assert again["bandwidth"] == pred["bandwidth"]


def _weights_per_token_from_map(out: Path, pred: dict) -> int:
    """Weight bytes a decode step must read: every weight region once, except the embedding
    and RoPE tables, of which one row each."""
    mm = json.loads((out / "memory_map.json").read_text())
    regions = {r["name"]: r for r in mm["regions"]}
    total = sum(r["nbytes"] for r in mm["regions"] if r["kind"] == "weights")
    emb, rope = regions["weights:embed"], regions["weights:rope"]
    return (total - emb["nbytes"] - rope["nbytes"] + emb["nbytes"] // emb["rows"]
            + rope["nbytes"] // rope["rows"])


def test_llama_2_7b_on_u280_from_its_config(tmp_path, capsys):
    out = tmp_path / "llama7b"
    rep, pred, _ = _compile(capsys, "llama-2-7b.json", "u280", out)
    s = rep["shape"]
    assert rep["parameters"] == 6_738_415_616 and rep["weights"] == "int8"
    b = pred["bandwidth"]
    # int8: a decode token reads every block and LM-head weight once, one byte each (plus the
    # per-channel bias/multiplier records): the parameters less the embedding table
    params = rep["parameters"] - s["vocab"] * s["hidden"]
    assert b["weight_bytes_per_token"] == pytest.approx(params, rel=0.02)
    assert b["weight_bytes_per_token"] == _weights_per_token_from_map(out, pred)
    # the image holds the int8 weights and the KV caches of 2048 positions (1 GiB)
    kv = 2 * s["layers"] * 2048 * s["kv_heads"] * s["head_dim"]
    assert pred["memory"]["by_kind"]["kv"] >= kv
    assert pred["memory"]["image_bytes"] > params + kv
    _check_common(pred, rep, out, capsys)
    # a shape-only build is not simulated
    assert main(["sim", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "shape-only build" in err[0]


def test_mamba_2_8b_on_u280_from_its_config(tmp_path, capsys):
    """``state-spaces/mamba-2.8b-hf``'s architecture (``examples/configs/mamba-2.8b.json``),
    int4: the state-space units sized for 64 layers of state (20 MiB of int32 scan state, in
    URAM), every weight read once a token (int4 codes and group scales, no KV cache), the decode
    step the same at every position, within the delivered-bandwidth roofline, the design
    fitting the board."""
    out = tmp_path / "mamba"
    rep, pred, text = _compile(capsys, "mamba-2.8b.json", "u280", out, "--weights", "int4")
    s, c = rep["shape"], pred["config"]
    assert (rep["family"], rep["weights"], rep["lm_head"]) == ("mamba", "int4", "int4")
    assert (s["layers"], s["d_inner"], s["d_state"], s["dt_rank"]) == (64, 5120, 16, 160)
    assert rep["parameters"] == pytest.approx(2.9e9, rel=0.01)
    assert (c["ssm_states"], c["ssm_channels"], c["conv_taps"], c["hadamard_block"]) == (
        16, 64 * 5120, 4, 1024) and c["ssm_uram"] and pred["fits"]
    b, d = pred["bandwidth"], pred["decode"]
    assert b["traffic"]["kv_read"] == b["traffic"]["kv_written"] == 0
    # int4 codes (half a byte) of every linear and the LM head with a scale byte per 32, less
    # than 10 % on top: the tiles of the 16-output x_b, x_c padded to the engine's 256 chains
    # (82 MB a token), the records, the decay-rate codes
    linears = rep["parameters"] - s["vocab"] * s["hidden"] - s["layers"] * s["d_inner"] * (
        s["d_state"] + s["d_conv"] + 3)
    int4 = linears / 2 * 17 / 16
    assert int4 < b["weight_bytes_per_token"] < 1.1 * int4
    assert len(set(d["cycles_at_positions"].values())) == 1
    assert d["tokens_per_s"] <= b["roofline_tokens_per_s"]
    _check_common(pred, rep, out, capsys)
    print(f"mamba-2.8b int4 on the u280: {d['tokens_per_s']:.1f} tokens/s (roofline "
          f"{b['roofline_tokens_per_s']:.1f}), {b['bytes_per_token'] / 1e6:,.0f} MB per token")


def test_bitnet_0_7b_on_kv260_from_its_config(tmp_path, capsys):
    out = tmp_path / "bitnet"
    rep, pred, _ = _compile(capsys, "bitnet-b1.58-0.7b.json", "kv260", out)
    s = rep["shape"]
    assert rep["weights"] == "ternary" and rep["config"]["tlmm"]
    assert set(rep["engines"]["L0"].values()) == {"tlmm"} and rep["engines"]["lm_head"] == "mpe"
    b = pred["bandwidth"]
    assert b["weight_bytes_per_token"] == _weights_per_token_from_map(out, pred)
    # ternary block linears at 5 bits per 3 weights (plus record padding: a 480-bit record per
    # 512-bit beat, 5/24 * 16/15 = 0.222 B per weight; chunk rounding and the 6 B parameter
    # record per output: 0.230 measured) and the int8 LM head
    h, i, n = s["hidden"], s["intermediate"], s["layers"]
    ternary_params = n * (4 * h * h + 3 * h * i)
    lm_head = s["vocab"] * h
    assert rep["lm_head"] == "int8"
    assert lm_head + ternary_params * 5 / 24 <= b["weight_bytes_per_token"] \
        <= lm_head + ternary_params * 0.235
    _check_common(pred, rep, out, capsys)
    # --lm-head int4: the same blocks, the head at 4 bits and a group scale per 32 weights
    rep4, pred4, text = _compile(capsys, "bitnet-b1.58-0.7b.json", "kv260", tmp_path / "b4",
                                 "--lm-head", "int4")
    assert rep4["weights"] == "ternary" and rep4["lm_head"] == "int4" and "int4 LM head" in text
    saved = b["weight_bytes_per_token"] - pred4["bandwidth"]["weight_bytes_per_token"]
    assert lm_head * 0.4 <= saved <= lm_head / 2
    assert pred4["decode"]["tokens_per_s"] > pred["decode"]["tokens_per_s"]


def test_weights_and_context_options(tmp_path, capsys):
    """--weights int8 puts a BitNet config on the matrix engine; --max-context sizes the KV
    caches (and a longer prompt than the context has no TTFT)."""
    out = tmp_path / "b8"
    rep, pred, _ = _compile(capsys, "bitnet-b1.58-0.7b.json", "u280", out, "--weights", "int8",
                            "--max-context", "256")
    assert rep["weights"] == "int8" and set(rep["engines"]["L0"].values()) == {"mpe"}
    assert rep["max_context"] == 256 and pred["prefill"]["512"]["ttft_ms"] is None
    s = rep["shape"]
    assert pred["memory"]["by_kind"]["kv"] >= 2 * s["layers"] * 256 * s["hidden"]


# --------------------------------------------------------------------------- bad inputs

def _one_line(capsys, *argv) -> str:
    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hwflow: error: "), err
    return err[0]


def test_bad_configs_exit_with_one_line(tmp_path, capsys):
    line = _one_line(capsys, "compile", str(tmp_path / "missing.json"), "--shape-only",
                     "--board", "u280", "-o", str(tmp_path / "o1"))
    assert "no such config" in line
    conf = json.loads((CONFIGS / "llama-2-7b.json").read_text())
    bad = tmp_path / "gpt2"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({**conf, "model_type": "gpt2"}))
    line = _one_line(capsys, "compile", str(bad), "--shape-only", "--board", "u280",
                     "-o", str(tmp_path / "o2"))
    assert "model_type 'gpt2' is not supported" in line
    line = _one_line(capsys, "compile", str(CONFIGS / "llama-2-7b.json"), "--shape-only",
                     "--board", "u280", "--max-context", "9000", "-o", str(tmp_path / "o3"))
    assert "9000" in line
    assert not any((tmp_path / f"o{k}").exists() for k in (1, 2, 3))
    assert "not an hwflow build folder" in _one_line(capsys, "predict", str(tmp_path))


def test_predict_of_a_full_tiny_build(tmp_path, capsys):
    """hwflow predict on a build compiled from weights: the same functions on its programs."""
    out = tmp_path / "tiny"
    assert main(["compile", "--example", "tiny-llama", "--board", "u280", "-o", str(out),
                 "--max-context", "128"]) == 0
    capsys.readouterr()
    assert main(["predict", str(out)]) == 0
    text = capsys.readouterr().out
    assert "tokens/s" in text
    pred = json.loads((out / "reports" / "predict.json").read_text())
    assert pred["decode"]["tokens_per_s"] > 0 and pred["prefill"]["512"]["ttft_ms"] is None
    assert pred["prefill"]["64"]["ttft_ms"] < pred["prefill"]["128"]["ttft_ms"]
    assert pred["memory"]["image_bytes"] == (out / "memory_image.bin").stat().st_size


@pytest.mark.parametrize("kind", ["int8", "ternary"])
def test_position_shortcut_equals_the_cycle_model(kind):
    """The per-position evaluation (only the position-dependent instructions recomputed)
    gives exactly mapping.cycles.predict's totals."""
    from hwflow.mapping.cycles import predict
    from hwflow.predict import _Timer
    from tests.mapping.test_traffic import _decoders

    qd, cfg = _decoders()[kind]        # tests/mapping/test_traffic.py's two decoders
    low = lower_decoder(qd, cfg, shape_only=True)
    timer = _Timer(cfg, None, low.max_context - 1)
    for info in [low.decode, *low.prefill.values()]:
        for pos in (0, 1, 7, 30, low.max_context - info.rows):
            assert timer.cycles(info.name, info.program, pos) == \
                predict(info.program, cfg, pos=pos)["total"], (info.name, pos)
    assert timer._split["decode"] is not None          # the shortcut was taken


def test_a_too_small_engine_is_sized_or_refused():
    """LLaMA-2-7B's down projection (K = 11008) needs a 2048-entry weight ring on the U280
    engine (1024 in its YAML), one activation row 4928 words and, for its image, all 32 HBM
    channels: sized, with notes, by default; one error line with adjust=False."""
    from hwflow.boards import load_board
    from hwflow.errors import HwflowError
    from hwflow.mapping.accel_config import choose_config
    from hwflow.predict import predict_decoder

    shape, _, _ = load_shape(str(CONFIGS / "llama-2-7b.json"))
    brd = load_board("u280")
    cfg = choose_config(brd)
    p = predict_decoder(shape, cfg, brd, max_context=256, prompt_lens=(64,))
    assert p["config"]["weight_depth"] == 2048 and p["config"]["act_depth"] >= 4928
    assert any("weight_depth" in n for n in p["notes"])
    # a 7.3 GB image: 915 MB per port on the YAML's 8 ports, each a 256 MiB pseudo-channel;
    # every one of the 32 channels is used, and the addresses reach the whole image
    assert p["config"]["mem_ports"] == 32 and any("raised to 32 ports" in n for n in p["notes"])
    assert p["memory"]["fits"] and p["memory"]["bytes_per_port"] <= p["memory"][
        "port_capacity_bytes"]
    assert 2 ** p["config"]["addr_bits"] * 32 * 32 >= p["memory"]["image_bytes"]
    with pytest.raises(HwflowError, match="act_depth >= 4928"):
        predict_decoder(shape, cfg, brd, max_context=256, adjust=False)
    # int4: 256 chains (twice the 2048 B super-beat of 512-bit ports) and an 8 MiB ring,
    # 2,908 RAMB36 in block RAM; the ring goes to URAM and the design fits
    p4 = predict_decoder(shape, cfg, brd, max_context=256, prompt_lens=(64,), weights="int4")
    assert p4["config"]["ring_uram"] and any("URAM" in n for n in p4["notes"])
    assert p4["fits"] and 0 < p4["resources"]["uram"] <= 960
    assert p4["resources"]["bram"] <= 2016


def test_a_7b_shape_never_holds_its_weights(tmp_path):
    """The whole shape-only compile of LLaMA-2-7B (6.7 GB of int8 weights, 13.5 GB in
    fp16) peaks far below one weight-sized array: the process's peak RSS stays under 1.5 GiB
    (measured: ~0.37 GiB, torch and transformers included)."""
    import subprocess
    import sys

    code = ("import resource, sys\nfrom hwflow.cli import main\n"
            "rc = main(sys.argv[1:])\n"
            "print(rc, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n")
    r = subprocess.run([sys.executable, "-c", code, "compile", str(CONFIGS / "llama-2-7b.json"),
                        "--shape-only", "--board", "u280", "-o", str(tmp_path / "o")],
                       capture_output=True, text=True, check=True)
    rc, rss_kb = (int(v) for v in r.stdout.strip().splitlines()[-1].split())
    assert rc == 0 and rss_kb < 1.5 * 2**20, rss_kb


def test_a_memory_bound_decoder_gets_every_channel_that_fits():
    """Qwen2.5-0.5B fits the U280's 8-port stripes, but decode is memory-bound: the engine
    takes all 32 HBM channels, each through a 512-bit port (a channel delivers 44 B per
    300 MHz cycle, more than a 256-bit port carries), chains and lanes grown with them,
    because that engine fits the board; a sweep's point (widen=False) keeps its 8 ports;
    int4 gets twice the super-beat of chains. Its 896-byte residual rows, padded to the
    2048-byte super-beat, cost no weight bytes: the MATMULs skip the padding (x_pad)."""
    from hwflow.boards import load_board
    from hwflow.mapping.accel_config import choose_config
    from hwflow.predict import predict_decoder

    shape, _, _ = load_shape(str(CONFIGS / "qwen2.5-0.5b.json"))
    brd = load_board("u280")
    cfg = choose_config(brd)
    wide = predict_decoder(shape, cfg, brd, max_context=256, prompt_lens=(64,))
    c = wide["config"]
    assert (c["mem_ports"], c["port_bytes"], c["chains"]) == (32, 64, 128) and wide["fits"]
    assert any("memory-bound" in n for n in wide["notes"])
    kept = predict_decoder(shape, cfg, brd, max_context=256, prompt_lens=(64,), widen=False)
    c = kept["config"]
    assert (c["mem_ports"], c["port_bytes"], c["chains"]) == (8, 32, 16)
    assert wide["decode"]["tokens_per_s"] > 3 * kept["decode"]["tokens_per_s"]
    # 494 M int8 parameters streamed per token (the embedding is gathered, not streamed; the
    # LM head is the tied embedding) and the R = 2 parameter rows of 2048 B of every tile of
    # 128 channels, no zero column for the rows' padding (and one RoPE row of 2 super-beats)
    params = 24 * (896 * (896 + 2 * 128) + 896 * 896 + 3 * 896 * 4864) + 151936 * 896
    tiles = 24 * (7 + 1 + 1 + 7 + 38 + 38 + 7) + 151936 // 128
    assert wide["bandwidth"]["weight_bytes_per_token"] == params + tiles * 2 * 2048 + 2 * 2048
    int4 = predict_decoder(shape, cfg, brd, max_context=256, prompt_lens=(64,),
                           weights="int4")
    c = int4["config"]
    assert (c["mem_ports"], c["port_bytes"], c["chains"]) == (32, 64, 256)


def test_wide_ports_where_the_channel_delivers_more():
    """An HBM pseudo-channel of the U280 delivers 44 B per 300 MHz cycle (425 GB/s over 32),
    more than a 256-bit port carries: LLaMA-2-7B's engine takes 512-bit ports, and its
    predictions use the channels' rate, not the ports' (no read stream faster than 44 B a
    cycle a port), so decode stays under the delivered-bandwidth roofline without the cap."""
    from hwflow.boards import load_board
    from hwflow.mapping.accel_config import choose_config
    from hwflow.predict import predict_decoder

    shape, _, _ = load_shape(str(CONFIGS / "llama-2-7b.json"))
    brd = load_board("u280")
    assert (brd.port_rate_bytes(32, 32), brd.port_rate_bytes(32, 64)) == (32, 44)
    p = predict_decoder(shape, choose_config(brd), brd, max_context=256, prompt_lens=(),
                        weights="int4")
    c = p["config"]
    assert (c["mem_ports"], c["port_bytes"], c["chains"], c["sparse"]) == (32, 64, 256, False)
    assert p["fits"] and not any("capped" in n for n in p["notes"])
    b = p["bandwidth"]
    assert b["delivered_gbps"] == 425 and b["achieved_gbps"] < 425
    assert p["decode"]["tokens_per_s"] < b["roofline_tokens_per_s"]


def test_a_sliding_window_bounds_the_decode_step():
    """Mistral-7B's shape with a 512-key window at a 2048 context (its real 4096 at 8192 is
    ``hwflow predict`` in the README): past the window a decode step reads and computes the
    same keys whatever the position, so the last position costs what position 511 costs and
    the mean over the context is faster than full attention's."""
    import dataclasses

    from hwflow.boards import load_board
    from hwflow.mapping.accel_config import choose_config
    from hwflow.predict import predict_decoder

    shape, _, _ = load_shape(str(CONFIGS / "mistral-7b-v0.1.json"))
    assert shape.windows == (4096,) * 32
    brd = load_board("u280")
    cfg = choose_config(brd)
    win = dataclasses.replace(shape, windows=(512,) * 32)
    runs = {nm: predict_decoder(s, cfg, brd, max_context=2048, prompt_lens=(64,))["decode"]
            for nm, s in (("window", win), ("full", dataclasses.replace(shape, windows=())))}
    at512 = predict_decoder(win, cfg, brd, max_context=513, prompt_lens=(64,))["decode"]
    assert runs["window"]["cycles_last"] == at512["cycles_last"]
    assert runs["full"]["cycles_last"] > runs["window"]["cycles_last"]
    assert runs["window"]["tokens_per_s"] > runs["full"]["tokens_per_s"]


def test_a_versal_board_counts_dsp58_and_states_its_proxy(tmp_path, capsys):
    # the VCK190's DSP58 are named as such (one per DSP48E2-mode slice), its LUT/FF a proxy
    _, pred, text = _compile(capsys, "qwen2.5-0.5b.json", "vck190", tmp_path / "q")
    fit = pred["resource_fit"]["fit"]
    assert fit["dsp"]["primitive"] == "DSP58"
    assert f"DSP58 {fit['dsp']['used']:,}" in text
    assert "note: DSP: DSP58, one per DSP48E2-mode slice" in text
    assert "note: LUT: estimated with the UltraScale+ fit" in text
