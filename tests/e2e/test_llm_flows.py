"""Language models end to end: a Hugging Face folder -> hwflow compile -> hwflow sim (Verilator).

What the transformer path must show: a tiny LLaMA with grouped-query attention (6 heads over 2
kv heads of 20) runs an 8-token prompt and 8 greedy decode steps on the RTL with every step's
logits bit-exact and the RTL's own greedy tokens equal to golden's; during decode no activation
crosses the memory interface; the one decode program serves every position; program bytes do
not grow with the context.
"""

import json
import subprocess
import sys

import pytest

from hwflow.cli import main
from hwflow.llm_examples import write_tiny_llama


@pytest.fixture(scope="module")
def tiny_build(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("llm")
    folder = write_tiny_llama(tmp / "tiny-llama")
    out = tmp / "build"
    assert main(["compile", str(folder), "--board", "u280", "--max-context", "64",
                 "-o", str(out)]) == 0
    return out


def test_prefill_and_decode_are_bit_exact_in_rtl(tiny_build, capsys):
    assert main(["sim", str(tiny_build), "--prompt-len", "8", "--new-tokens", "8"]) == 0
    sim = json.loads((tiny_build / "reports" / "sim.json").read_text())
    steps = sim["steps"]
    assert [s["kind"] for s in steps] == ["prefill"] + ["decode"] * 8
    assert all(s["bit_exact"] and s["isa_model_bit_exact"] for s in steps), steps
    assert sim["bit_exact"] and sim["tokens"] == sim["golden_tokens"]
    assert len(sim["tokens"]) == 9 and len(sim["float_tokens"]) == 9
    assert 0.0 <= sim["float_top1_agreement"] <= 1.0
    # the decode steps ran one program at eight positions
    assert [s["pos"] for s in steps[1:]] == list(range(8, 16))
    # always-on-chip decode: only weights, KV cache, the token id and the logits move
    dec = sim["traffic"]["decode"]
    assert dec["activations_read"] == 0 and dec["activations_written"] == 0, dec
    assert dec["weights_read"] > 0 and dec["kv_read"] > 0 and dec["kv_written"] > 0, dec
    assert dec["io_read"] > 0 and dec["io_written"] > 0, dec
    # the RTL's counters equal the ISA functional model's, byte for byte, in every step
    assert all(s["traffic_matches_isa_model"] for s in steps)
    assert sim["traffic"] == sim["isa_model_traffic"]
    assert "bit-exact" in capsys.readouterr().out


def test_build_folder_testbench_runs_with_plain_pytest(tiny_build):
    """tb/ replays the default prompt and decode steps against the golden logits."""
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        str(tiny_build / "tb")], capture_output=True, text=True, cwd=tiny_build)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "1 passed" in r.stdout


def test_two_prompts_reuse_the_build(tiny_build):
    """A prompt longer than the largest bucket (given ids): 16 rows at POS 0, then the 8-row
    bucket ending on the last prompt token (POS 11: rows 11..15 recomputed, their cache rows
    rewritten with the same values), whose last row's logits give the first new token."""
    ids = ",".join(str(i) for i in range(3, 3 + 19))
    assert main(["sim", str(tiny_build), "--prompt", ids, "--new-tokens", "2"]) == 0
    sim = json.loads((tiny_build / "reports" / "sim.json").read_text())
    assert [(s["kind"], s["pos"], s["rows"]) for s in sim["steps"]] == [
        ("prefill", 0, 16), ("prefill", 11, 8), ("decode", 19, 1), ("decode", 20, 1)]
    assert sim["bit_exact"]


def test_llama3_rope_and_a_vocabulary_past_16_bits(tmp_path):
    """Llama 3's shape of problem at tiny size: rope_type llama3 (the table from the model's own
    rescaled frequencies) and a 70,000-token vocabulary, past the MATMUL's 16-bit output
    count: the LM head runs as two MATMULs into one logits row. Prompt and decode in RTL,
    bit-exact, tokens equal golden."""
    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16}
    folder = write_tiny_llama(tmp_path / "llama3", seed=2, vocab_size=70000,
                              rope_parameters=rope)
    boards = tmp_path / "boards"
    boards.mkdir()
    (boards / "hbm-tiny.yaml").write_text(DECODE_BOARD)      # a small engine: a quick build
    out = tmp_path / "b"
    assert main(["compile", str(folder), "--board", "hbm-tiny", "--boards-dir", str(boards),
                 "--max-context", "32", "-o", str(out)]) == 0
    rep = json.loads((out / "reports" / "compile.json").read_text())
    assert rep["shape"]["vocab"] == 70000 and rep["shape"]["rope_type"] == "llama3"
    # the 16,382-word logits area (L = 4) needs a larger activation buffer: sized, with a note
    assert any("act_depth" in n for n in rep["config_notes"])
    # the LM head is two MATMULs (65,528 + 4,472 outputs), each after its PREFETCH and
    # followed by the STORE of its part of the logits row: three instructions more than the
    # 45 of the tiny LLaMA's decode program on this board, and a logits area of one part
    # (16,382 words), not the row
    assert rep["programs"]["decode"]["bytes"] == (45 + 3) * 32
    assert main(["sim", str(out), "--prompt-len", "8", "--new-tokens", "3"]) == 0
    sim = json.loads((out / "reports" / "sim.json").read_text())
    assert sim["bit_exact"] and sim["tokens"] == sim["golden_tokens"]
    assert all(s["bit_exact"] and s["isa_model_bit_exact"] for s in sim["steps"])


def test_program_bytes_do_not_grow_with_context(tmp_path):
    folder = write_tiny_llama(tmp_path / "tiny-llama")
    reports = []
    for ctx in (64, 2048):
        out = tmp_path / f"b{ctx}"
        assert main(["compile", str(folder), "--board", "u280", "--max-context", str(ctx),
                     "-o", str(out)]) == 0
        reports.append(json.loads((out / "reports" / "compile.json").read_text()))
    small, full = reports
    assert small["programs"] == full["programs"]
    assert full["naive_program_bytes"] > 500 * (full["programs"]["decode"]["bytes"]
                                                + full["programs"]["prefill"]["bytes"])
    assert full["program_reduction"] > 500


def test_unsupported_op_is_one_line(tmp_path, capsys):
    folder = write_tiny_llama(tmp_path / "gelu-llama", hidden_act="gelu")
    assert main(["compile", str(folder), "--board", "u280", "-o", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "gelu" in err, err
    assert not (tmp_path / "b").exists()


def test_board_without_transformer_units_is_refused(tmp_path, capsys):
    folder = write_tiny_llama(tmp_path / "tiny-llama")
    assert main(["compile", str(folder), "--board", "icebreaker", "-o", str(tmp_path / "b")]) == 2
    assert "transformer" in capsys.readouterr().err


@pytest.mark.parametrize("family", ["mistral", "qwen2", "phi3", "qwen3", "gemma2"])
def test_decoder_families_run_bit_exact_in_rtl(tmp_path, family):
    """Mistral, Qwen2 (q/k/v biases), Phi-3 (fused qkv_proj and gate_up_proj, split at load),
    Qwen3 (per-head q/k RMSNorms: RMSNORM with gamma codes, one row per head) and Gemma 2
    (GELU-tanh gate, score soft-cap in ATTN, post-norms with gamma codes and VADD residual
    adds, the LM head capped by SILUMUL TANH, every other layer sliding) compiled from their
    folders and simulated in RTL, every step bit-exact. The sliding windows (6 keys) are
    shorter than the prompt (8, one prefill bucket whose rows cross the window) plus 4 decode
    steps: ATTN reads the window's keys alone, its start moving with POS in the one decode
    program."""
    extra = {"sliding_window": 6} if family == "mistral" else {}
    folder = write_tiny_llama(tmp_path / family, seed=1, family=family, **extra)
    out = tmp_path / "b"
    assert main(["compile", str(folder), "--board", "u280", "--max-context", "32",
                 "-o", str(out)]) == 0
    rep = json.loads((out / "reports" / "compile.json").read_text())
    assert rep["family"] == family
    assert rep["shape"]["windows"] == {"mistral": [6, 6], "gemma2": [6, 0]}.get(family, [])
    assert main(["sim", str(out), "--prompt-len", "8", "--new-tokens", "5"]) == 0
    sim = json.loads((out / "reports" / "sim.json").read_text())
    assert sim["bit_exact"] and sim["tokens"] == sim["golden_tokens"]
    assert all(s["bit_exact"] and s["isa_model_bit_exact"] for s in sim["steps"])


#: A small HBM-like board for the decode mechanisms (issue "decode at the memory roofline"):
#: one 8-byte port (SB = 8 B, two act words of L = 4), an engine twice the beat wide (P x L =
#: 16 = 2 SB: an int4 memory row of two k-groups fills two ring entries in the two cycles it
#: takes to arrive, so int4 runs at the port's rate), 6 attention lanes (the 2 kv heads with
#: their 3 query heads each in one pass), a 4-lane vector unit (a whole act word per cycle).
#: The tiny LLaMA's heads of 20 B are 5 words: a position block of 2 heads is 40 B = 5
#: super-beats, no padding.
DECODE_BOARD = """\
name: hbm-tiny
description: a one-port HBM-like test card
vendor: xilinx
part: xcu280-fsvh2892-2L-e
family: virtex-ultrascale-plus-hbm
resources: {lut: 1303680, ff: 2607360, dsp: 9024, bram: 2016, uram: 960}
memory: {type: hbm2, channels: 1, port_bytes: 8, capacity_gb: 1, bandwidth_gbps: 2.4}
clocks: {kernel_mhz: 300}
flow: vitis
engine: {chains: 4, chain_len: 4, mem_ports: 1, act_depth: 2048, weight_depth: 512,
         transformer: true, attn_heads: 6, vec_lanes: 4}
"""


def test_int4_decode_on_a_head_major_cache_is_bit_exact_with_useful_kv_bytes(tmp_path):
    """GQA group of 3 (6 heads over 2 kv heads of 20: not powers of two), int4 linears, the
    head-major KV cache read once per step for all query heads of a kv head: 8 prompt tokens
    and 8 decode steps in RTL, every step bit-exact, tokens equal golden, no activation off
    chip, and the KV bytes read per decode step equal to the useful bytes, counted by the
    RTL's memory model and by the ISA model alike."""
    boards = tmp_path / "boards"
    boards.mkdir()
    (boards / "hbm-tiny.yaml").write_text(DECODE_BOARD)
    folder = write_tiny_llama(tmp_path / "tiny-llama")
    out = tmp_path / "build"
    assert main(["--boards-dir", str(boards), "compile", str(folder), "--board", "hbm-tiny",
                 "--max-context", "32", "--weights", "int4", "-o", str(out)]) == 0
    rep = json.loads((out / "reports" / "compile.json").read_text())
    formats = {la["name"]: la["format"] for la in rep["linears"]}
    assert all(f.startswith("int4") for f in formats.values()), formats
    assert main(["sim", str(out), "--prompt-len", "8", "--new-tokens", "8"]) == 0
    sim = json.loads((out / "reports" / "sim.json").read_text())
    assert sim["bit_exact"] and sim["tokens"] == sim["golden_tokens"]
    assert all(s["bit_exact"] and s["traffic_matches_isa_model"] for s in sim["steps"])
    dec = sim["traffic"]["decode"]
    assert dec["activations_read"] == dec["activations_written"] == 0
    # decode steps at positions 8..15 read keys 0..pos: K and V, 2 layers, 2 kv heads x 20 B
    keys = sum(p + 1 for p in range(8, 16))
    assert dec["kv_read"] == 2 * 2 * keys * 2 * 20
    assert dec["kv_written"] == 8 * 2 * 2 * 2 * 20


#: A card whose one memory port is wider than what its channel delivers (the U280's 512-bit
#: kernel ports on 256-bit HBM pseudo-channels): a 64-byte port whose channel delivers 13.3
#: GB/s at 300 MHz, 44 B a cycle; a dense-only engine (no N:M selectors, as the sizing builds
#: for decoders) twice the beat wide for int4 (16 chains x 8 = 128 = 2 x 64 B) and a TLMM
#: engine of 8 x 8 lookups (320-bit records: one a 512-bit beat).
WIDE_PORT_BOARD = """\
name: hbm-wide
description: a one-port HBM-like test card with a 512-bit port on a slower channel
vendor: xilinx
part: xcu280-fsvh2892-2L-e
family: virtex-ultrascale-plus-hbm
resources: {lut: 1303680, ff: 2607360, dsp: 9024, bram: 2016, uram: 960}
memory: {type: hbm2, channels: 1, port_bytes: 64, capacity_gb: 1, bandwidth_gbps: 13.3}
clocks: {kernel_mhz: 300}
flow: vitis
engine: {chains: 16, chain_len: 8, mem_ports: 1, act_depth: 2048, weight_depth: 256,
         transformer: true, attn_heads: 6, vec_lanes: 8, sparse: false, tlmm: true,
         tlmm_g: 3, tlmm_t: 8, tlmm_q: 8, tlmm_acc_depth: 512}
"""


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-bitnet"])
def test_a_port_wider_than_its_channel_delivers_is_bit_exact_and_modelled(tmp_path, model):
    """A 64-byte port throttled to the 44 B a cycle its channel delivers (the simulated
    memory's RATE_BYTES, from the board's bandwidth): int4 (LLaMA) or ternary (BitNet:
    TMATMUL records, the int8 LM head) prompt and decode bit-exact in RTL, tokens equal
    golden; the memory moved no more than 44 B a cycle; and the cycle model, which stretches
    every read stream's beats by 64/44, predicts the decode steps."""
    from hwflow.boards import load_board
    from hwflow.compiler.decoder_io import load_saved_decoder
    from hwflow.hw.config import AccelConfig
    from hwflow.llm_examples import write_tiny_bitnet
    from hwflow.mapping import cycles
    from hwflow.mapping.llm_lower import lower_decoder

    boards = tmp_path / "boards"
    boards.mkdir()
    (boards / "hbm-wide.yaml").write_text(WIDE_PORT_BOARD)
    write = write_tiny_llama if model == "tiny-llama" else write_tiny_bitnet
    folder = write(tmp_path / model)
    weights = ["--weights", "int4"] if model == "tiny-llama" else []
    out = tmp_path / "build"
    assert main(["--boards-dir", str(boards), "compile", str(folder), "--board", "hbm-wide",
                 "--max-context", "32", *weights, "-o", str(out)]) == 0
    conf = json.loads((out / "config.json").read_text())
    assert conf["memory_rate_bytes"] == 44
    assert main(["sim", str(out), "--prompt-len", "8", "--new-tokens", "8"]) == 0
    sim = json.loads((out / "reports" / "sim.json").read_text())
    assert sim["bit_exact"] and sim["tokens"] == sim["golden_tokens"]
    assert all(s["bit_exact"] and s["traffic_matches_isa_model"] for s in sim["steps"])

    cfg = AccelConfig(**conf["accel"])
    program = lower_decoder(load_saved_decoder(out / "decoder" / "quantized"), cfg,
                            shape_only=True).decode.program
    fit = cycles.board_fit(cfg, load_board("hbm-wide", boards))
    assert fit.beat_rate(cfg) == 44 / 64
    steps = [s for s in sim["steps"] if s["kind"] == "decode"]
    read = sum(v for k, v in sim["traffic"]["decode"].items() if k.endswith("_read"))
    assert read <= 44 * sum(s["cycles"] for s in steps)     # no more than the channel delivers
    errs = [cycles.predict(program, cfg, s["pos"], fit)["total"] / s["cycles"] - 1
            for s in steps]
    print(f"{model} decode steps: RTL {[s['cycles'] for s in steps]}, model error "
          f"{min(errs):+.2%} .. {max(errs):+.2%}")
    assert max(abs(e) for e in errs) <= 0.03
