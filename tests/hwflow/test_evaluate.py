"""``hwflow eval`` (hwflow/evaluate.py): perplexity of a compiled language model on real text.

A small LLaMA (hidden 96, 2 layers, 4 query heads over 2 KV heads) and a byte-level BPE
tokenizer of 512 tokens are trained for about a minute of one CPU core on the English text of
the Python documentation that ships with every Python (``pydoc_data.topics``), every eighth
topic held out. The model is compiled with int8 and with int4 weights and evaluated on the
held-out text: the float model must have learned the language (perplexity far below the
vocabulary's), and golden -- what the RTL computes -- must stay within 3 % (int8) and 10 %
(int4, groups of 32 along K) of the float perplexity.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from hwflow.buildfolder import open_build, write_manifest
from hwflow.cli import main
from hwflow.errors import HwflowError
from hwflow.evaluate import eval_windows, next_token_nll, perplexity, tokenize_text
from tests._cli import assert_one_line_error, run_cli

VOCAB = 512
CONTEXT = 64            # trained and compiled context: the eval windows are this long
EVAL_TOKENS = 1024      # predicted positions of the held-out text per build
# Training: 1000 steps of 32 x 64 tokens (~2 M tokens, ~10 passes over the 200 k of training
# text) at ~0.06 s a step on one core. The held-out perplexity lands near 12; a unigram model
# of the same tokens scores ~150, an untrained one ~VOCAB.
STEPS, BATCH, LR = 1000, 32, 3e-3
# "Learned something": below VOCAB / 16 = 32, well under the unigram's ~150, with 2.5x margin
# over the measured figure.
FLOAT_PPL_MAX = VOCAB / 16
GOLDEN_PPL_TOLERANCE = {"int8": 0.03, "int4": 0.10}     # the targets; never loosen
REPORT_KEYS = ("float_perplexity", "golden_perplexity", "top1_agreement", "tokens",
               "perplexity_ratio", "float_top1_accuracy", "golden_top1_accuracy")


def _split_topics() -> tuple[str, str]:
    """(training text, held-out text): every eighth documentation topic is held out."""
    from pydoc_data.topics import topics

    keys = sorted(topics)
    held = {k for i, k in enumerate(keys) if i % 8 == 3}
    return ("\n\n".join(topics[k] for k in keys if k not in held),
            "\n\n".join(topics[k] for k in keys if k in held))


def _train(folder: Path, text: str) -> None:
    """Train the tokenizer and the model on ``text``; ``save_pretrained`` both into ``folder``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([text], trainers.BpeTrainer(
        vocab_size=VOCAB, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    data = torch.tensor(tok.encode(text).ids)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)        # the same sums in the same order on every machine
    try:
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(
            vocab_size=VOCAB, hidden_size=96, intermediate_size=256, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2 * CONTEXT,
            tie_word_embeddings=False))
        opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=STEPS,
                                                    pct_start=0.1)
        gen = torch.Generator().manual_seed(0)
        for _ in range(STEPS):
            starts = torch.randint(0, len(data) - CONTEXT, (BATCH,), generator=gen)
            x = torch.stack([data[s:s + CONTEXT] for s in starts.tolist()])
            loss = model(input_ids=x, labels=x).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    finally:
        torch.set_num_threads(threads)
    model.eval().save_pretrained(str(folder))
    PreTrainedTokenizerFast(tokenizer_object=tok).save_pretrained(str(folder))


def _cli(*argv) -> str:
    """``hwflow ARGV`` in this process for the module fixtures (no capfd there); its stdout."""
    buf, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    assert code == 0, f"hwflow {' '.join(map(str, argv))}: exit {code}: {err.getvalue()}"
    return buf.getvalue()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The model folder (model + tokenizer) and the held-out text file."""
    root = tmp_path_factory.mktemp("eval")
    train_text, held_text = _split_topics()
    _train(root / "pydoc-llama", train_text)
    (root / "heldout.txt").write_text(held_text, encoding="utf-8")
    return root / "pydoc-llama", root / "heldout.txt"


@pytest.fixture(scope="module")
def evals(trained, tmp_path_factory):
    """Per weight precision: (build folder, eval report, eval's stdout) on the held-out text."""
    folder, held = trained
    root = tmp_path_factory.mktemp("builds")
    res = {}
    for w in GOLDEN_PPL_TOLERANCE:
        out = root / w
        _cli("compile", folder, "--board", "u280", "--weights", w, "--max-context", CONTEXT,
             "-o", out)
        text = _cli("eval", out, "--text", held, "--max-tokens", EVAL_TOKENS)
        res[w] = out, json.loads((out / "reports" / "eval.json").read_text()), text
    return res


# -- accuracy --------------------------------------------------------------------------------

@pytest.mark.parametrize("weights", sorted(GOLDEN_PPL_TOLERANCE))
def test_golden_perplexity_is_close_to_float(evals, weights):
    out, r, text = evals[weights]
    for k in REPORT_KEYS:
        assert math.isfinite(r[k]), (k, r[k])
    assert r["tokens"] == EVAL_TOKENS
    assert r["context"] == CONTEXT
    assert r["windows"] == len(eval_windows(EVAL_TOKENS + 1, CONTEXT)) == 17
    assert r["weights"] == weights
    assert r["int4_group_size"] == (32 if weights == "int4" else None)
    assert r["float_perplexity"] < FLOAT_PPL_MAX, r
    assert abs(r["golden_perplexity"] / r["float_perplexity"] - 1) \
        <= GOLDEN_PPL_TOLERANCE[weights], r
    assert 0.8 < r["top1_agreement"] <= 1.0, r
    assert r["float_top1_accuracy"] > 0.25, r       # the next token is right a third of the time
    assert "perplexity: float" in text and "top-1 agreement" in text and "17 windows" in text


def test_float_perplexity_is_the_torch_models(trained, evals):
    """The float figure is the Hugging Face model's own cross-entropy on the same windows."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, held = trained
    ids = AutoTokenizer.from_pretrained(str(folder)).encode(held.read_text(encoding="utf-8"))
    ids = torch.tensor(ids[:EVAL_TOKENS + 1])
    model = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    nll = []
    with torch.no_grad():
        for a, b in eval_windows(len(ids), CONTEXT):
            logits = model(input_ids=ids[None, a:b]).logits[0, :-1].double()
            nll.append(torch.nn.functional.cross_entropy(logits, ids[a + 1:b],
                                                         reduction="none"))
    want = math.exp(torch.cat(nll).mean().item())
    assert evals["int8"][1]["float_perplexity"] == pytest.approx(want, rel=1e-4)


def test_token_ids_give_the_same_figures(capfd, trained, evals, tmp_path):
    from transformers import AutoTokenizer

    folder, held = trained
    ids = AutoTokenizer.from_pretrained(str(folder)).encode(held.read_text(encoding="utf-8"))
    np.save(tmp_path / "ids.npy", np.array(ids, dtype=np.int32))
    out, want, _ = evals["int8"]
    code, text, err = run_cli(capfd, "eval", out, "--tokens", tmp_path / "ids.npy",
                              "--max-tokens", EVAL_TOKENS)
    assert code == 0, err
    got = json.loads((out / "reports" / "eval.json").read_text())
    for k in REPORT_KEYS:
        assert got[k] == want[k], k
    assert got["input"] == f"tokens:{tmp_path / 'ids.npy'}"


def test_eval_leaves_the_build_valid(evals):
    out = evals["int8"][0]
    open_build(out)                 # every file compile wrote is still as it wrote it
    marker = json.loads((out / "hwflow-build.json").read_text())
    assert "reports/eval.json" not in marker["files"]


# -- the pieces ------------------------------------------------------------------------------

@pytest.mark.parametrize("n,context", [(2, 64), (64, 64), (65, 64), (1025, 64), (10, 2)])
def test_windows_predict_every_token_once(n, context):
    predicted = [t for a, b in eval_windows(n, context) for t in range(a + 1, b)]
    assert predicted == list(range(1, n))
    assert all(b - a <= context for a, b in eval_windows(n, context))


def test_nll_and_perplexity():
    logits = np.array([[0.0, 0.0, 0.0, 0.0], [3.0, 1.0, 0.0, -2.0]])
    want = -np.log(np.exp(logits[1, 1]) / np.exp(logits[1]).sum())
    nll = next_token_nll(logits, np.array([2, 1]))
    assert nll == pytest.approx([math.log(4), want])
    assert perplexity(np.full(7, math.log(4))) == pytest.approx(4.0)
    # large logits: no overflow
    assert next_token_nll(np.array([[1e4, 0.0]]), np.array([0]))[0] == pytest.approx(0.0)


@pytest.mark.parametrize("source,needle", [("example:tiny-llama", "bundled example"),
                                           ("export:model.pt2", "torch.export archive")])
def test_text_needs_a_folder_tokenizer(tmp_path, source, needle):
    (tmp_path / "t.txt").write_text("hello")
    with pytest.raises(HwflowError, match="--tokens") as e:
        tokenize_text(tmp_path / "t.txt", source, 320)
    assert needle in str(e.value)


# -- bad input -------------------------------------------------------------------------------

def _bad_tokens(tmp_path: Path, kind: str) -> Path:
    p = tmp_path / "ids.npy"
    if kind == "float":
        np.save(p, np.array([1.0, 2.0, 3.0]))
    elif kind == "2-D":
        np.save(p, np.ones((2, 3), dtype=np.int64))
    elif kind == "one":
        np.save(p, np.array([5]))
    elif kind == "vocab":
        np.save(p, np.array([1, 2, VOCAB]))
    elif kind == "negative":
        np.save(p, np.array([1, -2, 3]))
    elif kind == "pickle":
        np.save(p, np.array([1, "a"], dtype=object), allow_pickle=True)
    elif kind == "npz":
        np.savez(p.with_suffix(".npz"), ids=np.array([1, 2, 3]))
        p.with_suffix(".npz").rename(p)
    elif kind == "text":
        p.write_text("1 2 3\n")
    return p


@pytest.mark.parametrize("kind,needles", [
    ("float", ["float64", "integer"]), ("2-D", ["(2, 3)", "1-D"]), ("one", ["1 token", "2"]),
    ("vocab", [f"{VOCAB}", "vocabulary"]), ("negative", ["-2", "vocabulary"]),
    ("pickle", ["without pickles", "np.save"]), ("npz", [".npz", ".npy"]),
    ("text", ["not a .npy file"]), ("missing", ["no such file"])])
def test_bad_token_files(capfd, evals, tmp_path, kind, needles):
    out = evals["int8"][0]
    p = _bad_tokens(tmp_path, kind)
    code, _, err = run_cli(capfd, "eval", out, "--tokens", p)
    assert_one_line_error(code, err, "--tokens", str(p), *needles)


def test_bad_text_and_options(capfd, evals, tmp_path):
    out = evals["int8"][0]
    code, _, err = run_cli(capfd, "eval", out, "--text", tmp_path / "nope.txt")
    assert_one_line_error(code, err, "nope.txt", "no such file")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    code, _, err = run_cli(capfd, "eval", out, "--text", tmp_path / "latin1.txt")
    assert_one_line_error(code, err, "latin1.txt", "UTF-8", "--tokens")
    (tmp_path / "empty.txt").write_text("")
    code, _, err = run_cli(capfd, "eval", out, "--text", tmp_path / "empty.txt")
    assert_one_line_error(code, err, "empty.txt", "0 token", "at least 2")
    np.save(tmp_path / "ids.npy", np.arange(10))
    code, _, err = run_cli(capfd, "eval", out, "--tokens", tmp_path / "ids.npy",
                           "--max-tokens", 0)
    assert_one_line_error(code, err, "--max-tokens 0")
    code, _, err = run_cli(capfd, "eval", out, "--tokens", tmp_path / "ids.npy",
                           "--text", tmp_path / "empty.txt")
    assert_one_line_error(code, err, "--text", "--tokens")
    code, _, err = run_cli(capfd, "eval", out)
    assert_one_line_error(code, err, "--text", "--tokens")


def test_builds_that_cannot_be_evaluated(capfd, trained, tmp_path):
    folder, held = trained
    code, _, err = run_cli(capfd, "eval", tmp_path, "--text", held)
    assert_one_line_error(code, err, "not an hwflow build folder")

    code, _, err = run_cli(capfd, "compile", folder, "--shape-only", "--board", "u280",
                           "--max-context", CONTEXT, "-o", tmp_path / "shape")
    assert code == 0, err
    code, _, err = run_cli(capfd, "eval", tmp_path / "shape", "--text", held)
    assert_one_line_error(code, err, "shape-only", "weights")

    # an MLP build as far as eval reads one: its config.json, checked against the manifest
    mlp = tmp_path / "mlp"
    mlp.mkdir()
    (mlp / "config.json").write_text(json.dumps({"kind": "mlp"}))
    write_manifest(mlp, {"kind": "mlp", "rebuild": None})
    code, _, err = run_cli(capfd, "eval", mlp, "--text", held)
    assert_one_line_error(code, err, "MLP build", "language-model")


def test_text_without_the_tokenizer(capfd, trained, tmp_path):
    """A build from a folder without tokenizer files, or whose folder is gone, takes --tokens."""
    from hwflow.llm_examples import write_tiny_llama

    folder, held = trained
    bare = write_tiny_llama(tmp_path / "bare")
    code, _, err = run_cli(capfd, "compile", bare, "--board", "u280", "--max-context", 16,
                           "-o", tmp_path / "out")
    assert code == 0, err
    code, _, err = run_cli(capfd, "eval", tmp_path / "out", "--text", held)
    assert_one_line_error(code, err, str(bare), "no tokenizer", "--tokens")
    shutil.rmtree(bare)
    code, _, err = run_cli(capfd, "eval", tmp_path / "out", "--text", held)
    assert_one_line_error(code, err, str(bare), "not there", "--tokens")
    np.save(tmp_path / "ids.npy", np.arange(40) % 320)
    code, text, err = run_cli(capfd, "eval", tmp_path / "out", "--tokens", tmp_path / "ids.npy")
    assert code == 0, err
    assert "39 positions" in text and "3 windows" in text
