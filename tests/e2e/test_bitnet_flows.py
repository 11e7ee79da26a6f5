"""BitNet b1.58 end to end: ``hwflow compile --example tiny-bitnet --board kv260`` -> ``hwflow
sim`` (Verilator).

What the ternary path must show: the tiny BitNet (ternary q/k/v/o/gate/up/down, squared-ReLU
MLP, sub-norms, gamma codes) compiles with its linears on the TLMM engine (ABSQUANT + TMATMUL),
and a 16-token prompt (one 16-row prefill bucket: every TMATMUL in 4 passes of 4 rows that
share one fetch of its index records) plus 8 greedy decode steps run on the RTL with every
step's logits bit-exact and the RTL's greedy tokens equal to golden's; decode keeps activations
on chip.
"""

import json

import pytest

from hwflow.cli import main


@pytest.fixture(scope="module")
def bitnet_build(tmp_path_factory):
    out = tmp_path_factory.mktemp("bitnet") / "build"
    assert main(["compile", "--example", "tiny-bitnet", "--board", "kv260", "--max-context",
                 "64", "-o", str(out)]) == 0
    return out


def test_compile_puts_the_ternary_linears_on_the_tlmm_engine(bitnet_build):
    rep = json.loads((bitnet_build / "reports" / "compile.json").read_text())
    conf = json.loads((bitnet_build / "config.json").read_text())
    assert conf["accel"]["tlmm"]
    eng = rep["engines"]
    assert eng["lm_head"] == "mpe"
    for layer in ("L0", "L1"):
        assert set(eng[layer].values()) == {"tlmm"}, eng
    t = rep["tlmm"]
    assert (t["G"], t["T"], t["Q"]) == (conf["accel"]["tlmm_g"], conf["accel"]["tlmm_t"],
                                        conf["accel"]["tlmm_q"])
    assert t["lookups_per_cycle"] == t["T"] * t["Q"]
    assert t["sizing"]["source"] in ("board", "sized") and "resources" in t["sizing"]
    assert rep["resources"]["tlmm"]["lut"] == t["sizing"]["resources"]["lut"]
    lin = {r["name"]: r for r in rep["linears"]}
    assert lin["L0.q"]["tlmm"] == {"G": t["G"], "T": t["T"], "Q": t["Q"]}


def test_prefill_and_decode_are_bit_exact_in_rtl(bitnet_build, capsys):
    conf = json.loads((bitnet_build / "config.json").read_text())["accel"]
    assert conf["tlmm_rows"] * conf["tlmm_passes"] == 16        # the KV260's engine
    assert main(["sim", str(bitnet_build), "--prompt-len", "16", "--new-tokens", "8"]) == 0
    sim = json.loads((bitnet_build / "reports" / "sim.json").read_text())
    steps = sim["steps"]
    assert [(s["kind"], s["rows"]) for s in steps] == [("prefill", 16)] + [("decode", 1)] * 8
    assert all(s["bit_exact"] and s["isa_model_bit_exact"] for s in steps), steps
    assert sim["bit_exact"] and sim["tokens"] == sim["golden_tokens"]
    dec = sim["traffic"]["decode"]
    assert dec["activations_read"] == 0 and dec["activations_written"] == 0, dec
    assert sim["traffic"] == sim["isa_model_traffic"]
    # the 16-row prefill reads every ternary linear's weights once, as one decode step does
    # (and the LM head's, on the last row only); besides, only the RoPE rows of 15 more
    # positions (2880 B): re-read per pass it would read 4x, per row 16x
    assert sim["traffic"]["prefill"]["weights_read"] <= 1.05 * dec["weights_read"] / 8
    t = sim["tlmm"]
    assert t["peak_lookups_per_cycle"] == t["T"] * t["Q"]
    if t["tlmm_lookups_per_cycle"] is not None:    # the simulator reports TLMM_BUSY
        assert 0 < t["tlmm_lookups_per_cycle"] <= t["peak_lookups_per_cycle"]
    assert "BIT-EXACT" in capsys.readouterr().out


def test_int4_lm_head_beside_the_ternary_blocks_is_bit_exact_in_rtl(tmp_path, capsys):
    """``--lm-head int4``: the blocks on the TLMM engine as before, the LM head a W4A8 MATMUL
    (its weight bytes about half the int8 head's); prompt and decode bit-exact on the same
    accelerator (the same Verilator build as the int8-head case)."""
    out = tmp_path / "b4"
    assert main(["compile", "--example", "tiny-bitnet", "--board", "kv260", "--max-context",
                 "64", "--lm-head", "int4", "-o", str(out)]) == 0
    rep = json.loads((out / "reports" / "compile.json").read_text())
    assert rep["weights"] == "ternary" and rep["lm_head"] == "int4"
    assert rep["engines"]["lm_head"] == "mpe" and set(rep["engines"]["L0"].values()) == {"tlmm"}
    assert main(["sim", str(out), "--prompt-len", "8", "--new-tokens", "4"]) == 0
    sim = json.loads((out / "reports" / "sim.json").read_text())
    assert all(s["bit_exact"] and s["isa_model_bit_exact"] for s in sim["steps"])
    assert sim["bit_exact"] and sim["tokens"] == sim["golden_tokens"]
    assert "BIT-EXACT" in capsys.readouterr().out


def test_llama_typed_ternary_checkpoint_compiles_as_ternary(tmp_path, capsys):
    """A checkpoint that says model_type llama but whose block linears are 0/+-s per tensor
    (as a BitNet b1.58 model exported as LLaMA): reported, compiled on the table-lookup engine
    with the ternary values exact, simulated bit-exact; --weights int8 still overrides."""
    import torch
    from safetensors.torch import load_file, save_file

    from hwflow.llm_examples import write_tiny_llama

    folder = write_tiny_llama(tmp_path / "ternary-llama", seed=4)
    path = next(folder.glob("*.safetensors"))
    tensors = load_file(str(path))
    for name, w in tensors.items():
        if name.endswith("_proj.weight"):
            s = w.abs().mean()
            tensors[name] = (torch.clamp(torch.round(w / s), -1, 1) * s).contiguous()
    save_file(tensors, str(path), metadata={"format": "pt"})
    out = tmp_path / "b"
    assert main(["compile", str(folder), "--board", "kv260", "--max-context", "32",
                 "-o", str(out)]) == 0
    assert "note: the block linears are ternary in the checkpoint" in capsys.readouterr().out
    rep = json.loads((out / "reports" / "compile.json").read_text())
    assert all(set(rep["engines"][la].values()) == {"tlmm"} for la in ("L0", "L1"))
    assert rep["family"] == "llama"
    assert main(["sim", str(out), "--prompt-len", "8", "--new-tokens", "2"]) == 0
    sim = json.loads((out / "reports" / "sim.json").read_text())
    assert sim["bit_exact"] and sim["tokens"] == sim["golden_tokens"]
    out8 = tmp_path / "b8"
    assert main(["compile", str(folder), "--board", "kv260", "--max-context", "32",
                 "--weights", "int8", "-o", str(out8)]) == 0
    rep8 = json.loads((out8 / "reports" / "compile.json").read_text())
    assert set(rep8["engines"]["L0"].values()) == {"mpe"}
