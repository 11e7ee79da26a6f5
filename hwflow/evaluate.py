"""``hwflow eval``: how well a compiled language model predicts real text, float vs golden.

A decoder build folder holds the float model as the frontend recognised it
(``decoder/float.*``) and the quantized decoder the accelerator runs (``decoder/quantized.*``,
what :func:`compiler.llm_interpret.golden_step` computes bit for bit). Both read the same token
ids, teacher-forced: every position predicts the next token of the text, and

* perplexity is ``exp(mean NLL)`` of the true next tokens under ``log_softmax`` of the logits:
  float64 for the float model; for golden, its int8 logits times the logits scale
  (``QDecoder.scales["logits"]``), the float values the RTL's bytes stand for;
* ``top1_agreement`` is the fraction of positions where the two argmaxes agree (ties: lowest id,
  as the RTL's argmax).

Text longer than the compiled max context ``C`` (the KV cache holds ``C`` positions) is
evaluated in consecutive windows of ``C`` tokens that overlap by one token: every token after
the first is predicted exactly once, from the tokens since its window began (at least the one
before it). Each window is one golden step of all its rows at position 0: a token's integers
depend only on the tokens before it and its position, not on how the host splits the steps
(``golden_step``'s docstring), so every row is what the accelerator computes at that position.

Token ids come from ``--tokens FILE.npy`` or from ``--text FILE`` encoded offline with the
tokenizer of the Hugging Face folder the build was compiled from (its ``source``).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from hwflow.buildfolder import open_build, write_json
from hwflow.errors import HwflowError

__all__ = ["evaluate_build", "load_token_file", "tokenize_text", "eval_windows",
           "next_token_nll", "perplexity"]


# -- the numbers -----------------------------------------------------------------------------

def eval_windows(n_tokens: int, context: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]``: windows of at most ``context`` tokens over ``n_tokens`` that
    overlap by one token, so that tokens ``1 .. n_tokens-1`` are each predicted once.

    Parameters
    ----------
    n_tokens : int
        Tokens of the text (at least 2).
    context : int
        Longest window: the build's max context (at least 2).

    Returns
    -------
    list of (int, int)
        Half-open token ranges; window ``[a, b)`` predicts tokens ``a+1 .. b-1``.
    """
    step = context - 1
    return [(a, min(a + context, n_tokens)) for a in range(0, n_tokens - 1, step)]


def next_token_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Negative log-likelihood (nats) of ``targets[i]`` under ``log_softmax(logits[i])``.

    Parameters
    ----------
    logits : numpy.ndarray
        ``[T, vocab]`` float logits.
    targets : numpy.ndarray
        ``[T]`` token ids.

    Returns
    -------
    numpy.ndarray
        float64 ``[T]``.
    """
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=-1))
    return log_norm - z[np.arange(z.shape[0]), np.asarray(targets)]


def perplexity(nll: np.ndarray) -> float:
    """``exp(mean(nll))``."""
    return float(math.exp(float(np.mean(nll))))


# -- the inputs ------------------------------------------------------------------------------

def load_token_file(path, vocab: int) -> np.ndarray:
    """Token ids from a ``.npy`` file (``allow_pickle=False``): a 1-D integer array of ids in
    ``0 .. vocab-1``.

    Raises
    ------
    HwflowError
        One line naming the problem: not a file, not a ``.npy`` array, wrong shape or dtype,
        ids outside the vocabulary.
    """
    p = Path(path)
    if not p.is_file():
        raise HwflowError(f"--tokens '{p}': no such file; give a .npy file of token ids "
                          "(np.save('ids.npy', np.array(ids)))")
    save = "np.save('ids.npy', np.array(ids, dtype=np.int64))"
    with open(p, "rb") as f:
        magic = f.read(6)
    if magic[:4] == b"PK\x03\x04":
        raise HwflowError(f"--tokens '{p}' is an .npz archive (np.savez); give one .npy array "
                          f"of token ids: {save}")
    if magic != b"\x93NUMPY":
        raise HwflowError(f"--tokens '{p}' is not a .npy file (no NumPy header); save the ids "
                          f"with {save}")
    try:
        arr = np.load(p, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise HwflowError(f"--tokens '{p}' cannot be read as a .npy array without pickles ("
                          f"{' '.join(str(e).split())[:120]}); save the ids with {save}") from None
    if arr.dtype.kind not in "iu":
        raise HwflowError(f"--tokens '{p}' holds {arr.dtype} values; token ids must be an "
                          "integer array (e.g. np.array(ids, dtype=np.int64))")
    if arr.ndim != 1:
        raise HwflowError(f"--tokens '{p}' has shape {arr.shape}; give a 1-D array of token "
                          "ids (one sequence; flatten or concatenate several)")
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= vocab):
        bad = int(arr.min()) if int(arr.min()) < 0 else int(arr.max())
        raise HwflowError(f"--tokens '{p}': token id {bad} is outside the model's vocabulary "
                          f"(0..{vocab - 1}); tokenize with the model's own tokenizer")
    return arr.astype(np.int64)


def tokenize_text(path, source: str, vocab: int) -> np.ndarray:
    """The token ids of text file ``path`` (UTF-8), encoded offline by the tokenizer of the
    Hugging Face folder named by the build's ``source`` (``hf:FOLDER``), special tokens
    included as the tokenizer adds them (a BOS for LLaMA's).

    Raises
    ------
    HwflowError
        A missing or non-UTF-8 file, a build compiled from something that is not a folder with
        a tokenizer (an example, a torch.export archive, a folder moved or without tokenizer
        files), or ids outside the vocabulary; the message points to ``--tokens``.
    """
    p = Path(path)
    if not p.is_file():
        raise HwflowError(f"--text '{p}': no such file; give a UTF-8 text file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise HwflowError(f"--text '{p}' is not UTF-8 text (byte {e.start}); convert it or give "
                          "token ids with --tokens FILE.npy") from None
    tok = _source_tokenizer(source)
    ids = np.asarray(tok.encode(text), dtype=np.int64)
    if ids.size and int(ids.max()) >= vocab:
        raise HwflowError(f"the tokenizer of {source[3:]} gives token id {int(ids.max())}, "
                          f"outside the model's vocabulary (0..{vocab - 1}); give token ids "
                          "with --tokens FILE.npy")
    return ids


def _source_tokenizer(source: str):
    """``AutoTokenizer`` of the build's source folder, offline; one line when there is none."""
    use = "give token ids with --tokens FILE.npy instead"
    kind, _, where = source.partition(":")
    if kind != "hf":
        what = {"example": f"the bundled example {where}",
                "export": f"the torch.export archive {where}"}.get(kind, repr(source))
        raise HwflowError(f"--text needs the model folder's tokenizer, and this build was "
                          f"compiled from {what}, which has none; {use}")
    folder = Path(where)
    if not folder.is_dir():
        raise HwflowError(f"--text needs the tokenizer of the model folder '{folder}' this build "
                          "was compiled from, which is not there (a relative path is taken "
                          f"from the current folder); run from where you compiled, or {use}")
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception:  # noqa: BLE001 -- transformers raises many kinds for a missing tokenizer
        raise HwflowError(f"--text: the model folder '{folder}' has no tokenizer that "
                          f"transformers can load offline (tokenizer.json, ...); {use}") from None


# -- the command -----------------------------------------------------------------------------

def _weights(qd) -> tuple[str, dict]:
    """The weight precision golden runs (``int8``, ``int4``, ``ternary``, or ``mixed`` for a
    mix of int4 and int8) and the count of linears per format, from the QLinears themselves."""
    from hwflow.compiler.decoder import QLinear

    linears = [qd.lm_head] + [v for ly in qd.layers for v in vars(ly).values()
                              if isinstance(v, QLinear)]
    counts: dict = {}
    for ql in linears:
        f = "ternary" if ql.ternary else "int4" if ql.w4 is not None else "int8"
        counts[f] = counts.get(f, 0) + 1
    if "ternary" in counts:
        return "ternary", counts
    return (next(iter(counts)) if len(counts) == 1 else "mixed"), counts


def evaluate_build(out, text=None, tokens=None, max_tokens: int | None = None) -> dict:
    """Perplexity and top-1 agreement of the float and golden models of decoder build ``out``
    on a text (``text``: a UTF-8 file) or token ids (``tokens``: a ``.npy`` file); writes and
    returns ``reports/eval.json``'s content.

    Parameters
    ----------
    out : path-like
        A build folder written by ``hwflow compile`` from a language model's weights.
    text, tokens : path-like, optional
        Exactly one: a text file (tokenized with the source folder's tokenizer) or a ``.npy``
        array of token ids.
    max_tokens : int, optional
        Predict at most this many positions (the first ``max_tokens + 1`` tokens).

    Returns
    -------
    dict
        ``float_perplexity``, ``golden_perplexity``, ``top1_agreement``, ``tokens`` (predicted
        positions), ``perplexity_ratio`` (golden / float), ``float_top1_accuracy`` and
        ``golden_top1_accuracy`` (argmax == the text's next token), ``weights``,
        ``linear_formats``, ``int4_group_size`` (None without int4 weights), ``context`` (the
        window: the build's max context), ``windows``, ``logits_scale``, ``input``, ...

    Raises
    ------
    HwflowError
        One line: not a decoder build, a shape-only build, a bad input file, fewer than two
        tokens, ``max_tokens < 1``.
    """
    from hwflow.compiler.decoder_io import load_saved_decoder
    from hwflow.compiler.lm import float_logits, golden_logits, max_context
    from hwflow.golden.int4 import GROUP

    out = Path(out)
    if (text is None) == (tokens is None):
        raise HwflowError("give the text to evaluate on: --text FILE or --tokens FILE.npy")
    if max_tokens is not None and max_tokens < 1:
        raise HwflowError(f"--max-tokens {max_tokens}: give at least 1 position to predict")
    # the image and the RTL are not read: their sizes are checked, hashing them would be wasted
    conf = open_build(out, size_only=("memory_image.bin", "rtl/hwflow_accel.v"))
    if conf.get("kind") != "decoder":
        raise HwflowError(f"{out} is an MLP build; hwflow eval is for language-model "
                          "(decoder) builds: compile a Hugging Face LLaMA-family folder")
    if conf.get("shape_only"):
        raise HwflowError(f"{out} is a shape-only build (compiled from a config: no weights); "
                          "compile the model's weights (its Hugging Face folder) to evaluate it")
    qd = load_saved_decoder(out / "decoder" / "quantized")
    fd = load_saved_decoder(out / "decoder" / "float")
    vocab, context = qd.shape.vocab, max_context(qd)
    if context < 2:
        raise HwflowError(f"{out} was compiled with a max context of {context}: no position has "
                          "a next token to predict; recompile with --max-context 2 or more")
    if tokens is not None:
        ids, given = load_token_file(tokens, vocab), f"tokens:{tokens}"
    else:
        ids, given = tokenize_text(text, fd.source, vocab), f"text:{text}"
    n_all = int(ids.size)
    if n_all < 2:
        what = "--tokens" if tokens is not None else "--text"
        raise HwflowError(f"{what} '{tokens if tokens is not None else text}' gives {n_all} "
                          "token(s); at least 2 are needed (one to read, one to predict)")
    if max_tokens is not None:
        ids = ids[:max_tokens + 1]

    scale = float(qd.scales["logits"])
    nll_f, nll_g, agree, hit_f, hit_g = [], [], [], [], []
    wins = eval_windows(int(ids.size), context)
    for a, b in wins:
        w = ids[a:b]
        target = w[1:]
        f_logits = float_logits(fd, w)[:-1]
        g_logits = golden_logits(qd, w)[:-1].astype(np.float64)
        g_logits *= scale
        nll_f.append(next_token_nll(f_logits, target))
        nll_g.append(next_token_nll(g_logits, target))
        f_top, g_top = np.argmax(f_logits, axis=-1), np.argmax(g_logits, axis=-1)
        agree.append(f_top == g_top)
        hit_f.append(f_top == target)
        hit_g.append(g_top == target)
    nll_f, nll_g = np.concatenate(nll_f), np.concatenate(nll_g)
    weights, formats = _weights(qd)
    ppl_f, ppl_g = perplexity(nll_f), perplexity(nll_g)
    report = {
        "model": qd.name, "source": fd.source, "board": conf.get("board"),
        "input": given, "input_tokens": n_all,
        "tokens": int(nll_f.size),
        "float_perplexity": ppl_f,
        "golden_perplexity": ppl_g,
        "perplexity_ratio": ppl_g / ppl_f,
        "float_nll": float(np.mean(nll_f)), "golden_nll": float(np.mean(nll_g)),
        "top1_agreement": float(np.mean(np.concatenate(agree))),
        "float_top1_accuracy": float(np.mean(np.concatenate(hit_f))),
        "golden_top1_accuracy": float(np.mean(np.concatenate(hit_g))),
        "weights": weights, "linear_formats": formats,
        "int4_group_size": GROUP if "int4" in formats else None,
        "vocab": vocab, "context": context, "windows": len(wins),
        "windowing": f"windows of up to {context} tokens (the compiled max context) "
                     "overlapping by one token: each token after the first is predicted once",
        "logits_scale": scale,
    }
    write_json(out / "reports" / "eval.json", report)
    return report
