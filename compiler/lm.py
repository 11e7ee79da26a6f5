"""Language models of every family behind one interface: what the compile flow, ``hwflow sim``
and its testbench call on a model, whatever its family.

A transformer decoder (:mod:`compiler.decoder`: FloatDecoder / QDecoder, run by
:mod:`compiler.llm_interpret`) and a Mamba (:mod:`compiler.ssm`: FloatMamba / QMamba, run by
:mod:`compiler.ssm_interpret` and :mod:`compiler.ssm_quant`) answer the same calls here, so a
new model family is a case in these functions and in the lowering, never a second flow.
"""

from __future__ import annotations

import numpy as np

from .llm_interpret import GoldenRun, KVCache, float_forward, golden_step
from .llm_interpret import golden_generate as _decoder_generate
from .llm_interpret import top1_agreement as _top1
from .ssm import FloatMamba
from .ssm_graph import MAMBA_MAX_CONTEXT
from .ssm_interpret import mamba_logits
from .ssm_quant import CALIB_TOKENS, QMamba, QMambaState, qmamba_run

__all__ = ["open_model", "is_state_space", "max_context", "float_logits", "golden_logits",
           "golden_generate", "float_generate", "top1_agreement", "quant_report"]


def open_model(path, trust_model: bool = False, max_context: int | None = None,
               stream: bool = False):
    """The float model of a Hugging Face folder or a ``torch.export`` archive: a Mamba folder
    (``compiler.llm_config.is_ssm_config``) through
    ``compiler.ssm_frontend.load_mamba`` (``max_context`` does not apply: the state does not
    grow), anything else through ``compiler.llm_frontend`` (``open_decoder`` with ``stream``:
    its blocks recognised as they are read, else ``load_decoder``).

    Raises
    ------
    CompileError
        The frontends' one-line errors.
    """
    from pathlib import Path

    from .llm_config import is_ssm_config
    from .llm_frontend import load_decoder, open_decoder

    if Path(path).is_dir() and is_ssm_config(path):     # an archive is not read as a config
        from .ssm_frontend import load_mamba

        return load_mamba(path)
    return (open_decoder if stream else load_decoder)(path, trust_model=trust_model,
                                                      max_context=max_context)


def is_state_space(model) -> bool:
    """A Mamba (float or quantized): a recurrent state, no KV cache."""
    return isinstance(model, FloatMamba | QMamba)


def max_context(model) -> int:
    """Positions the model runs to: a decoder's ``max_context`` (its KV cache and RoPE table),
    a state-space model's :data:`~compiler.ssm_graph.MAMBA_MAX_CONTEXT` (no cache: the
    position only counts)."""
    return MAMBA_MAX_CONTEXT if is_state_space(model) else int(model.max_context)


def float_logits(fm, ids) -> np.ndarray:
    """Float64 logits ``[len(ids), vocab]`` of ``ids`` as one sequence from the start."""
    return mamba_logits(fm, ids) if is_state_space(fm) else float_forward(fm, ids)


def golden_logits(qm, ids) -> np.ndarray:
    """int8 logits ``[len(ids), vocab]`` of the integer model over ``ids`` from the start."""
    if is_state_space(qm):
        return qmamba_run(qm, ids, QMambaState.empty(qm))[0]
    return golden_step(qm, [int(t) for t in ids], 0, KVCache.empty(qm))


def golden_generate(qm, prompt: list[int], new_tokens: int) -> GoldenRun:
    """Greedy generation with the integer model (:func:`compiler.llm_interpret.golden_generate`'s
    contract: the prompt's ``[len(prompt), vocab]`` logits, then one ``[1, vocab]`` row per
    further token; ties pick the lowest id). A Mamba carries its state from one step to the
    next, as the accelerator does."""
    if not is_state_space(qm):
        return _decoder_generate(qm, prompt, new_tokens)
    prompt = [int(t) for t in prompt]
    if not prompt:
        raise ValueError("golden_generate needs a non-empty prompt")
    run = GoldenRun(tokens=[])
    state = QMambaState.empty(qm)
    step = prompt
    while len(run.tokens) < int(new_tokens):
        logits, state = qmamba_run(qm, step, state)
        run.step_logits.append(logits)
        run.tokens.append(int(np.argmax(logits[-1])))
        step = run.tokens[-1:]
    return run


def float_generate(fm, prompt: list[int], new_tokens: int) -> list[int]:
    """Greedy generation with the float model: the ``new_tokens`` generated ids (the whole
    sequence recomputed per token: a reference, not a fast path)."""
    seq, out = [int(t) for t in prompt], []
    for _ in range(int(new_tokens)):
        out.append(int(np.argmax(float_logits(fm, seq)[-1])))
        seq.append(out[-1])
    return out


def top1_agreement(fm, qm, prompt: list[int], tokens: list[int]) -> float:
    """Fraction of golden ``tokens`` the float model would also pick, teacher-forced
    (:func:`compiler.llm_interpret.top1_agreement`)."""
    return _top1(fm, qm, prompt, tokens, forward=float_logits)


def quant_report(fm, qm, seed: int = 0) -> dict:
    """Golden-vs-float error on a held-out random sequence (not the calibration data).

    Returns
    -------
    dict
        ``tokens`` (sequence length), ``cosine`` (mean over positions of the cosine similarity
        of dequantized golden logits and float logits), ``cosine_min``, ``max_abs_err`` (float
        logit units), ``logit_absmax`` (float), ``top1`` (fraction of positions whose argmax
        agree), ``greedy_top1`` (teacher-forced agreement of 8 golden-generated tokens after an
        8-token prompt, :func:`top1_agreement`), ``seed``.
    """
    rng = np.random.default_rng([seed, 1])  # calibration uses [seed, 0]: held out
    ctx = max_context(qm)
    t = min(CALIB_TOKENS, ctx)
    ids = rng.integers(0, fm.shape.vocab, t)
    ref = float_logits(fm, ids)
    got = golden_logits(qm, ids).astype(np.float64) * qm.scales["logits"]
    num = np.sum(ref * got, axis=-1)
    den = np.linalg.norm(ref, axis=-1) * np.linalg.norm(got, axis=-1)
    cos = np.where(den > 0, num / np.maximum(den, 1e-300), 0.0)
    n_prompt = min(8, max(1, ctx // 2))
    prompt = ids[:n_prompt].tolist()
    run = golden_generate(qm, prompt, min(8, ctx - n_prompt + 1))
    return {
        "tokens": int(t),
        "cosine": float(np.mean(cos)),
        "cosine_min": float(np.min(cos)),
        "max_abs_err": float(np.max(np.abs(got - ref))),
        "logit_absmax": float(np.max(np.abs(ref))),
        "top1": float(np.mean(np.argmax(got, axis=-1) == np.argmax(ref, axis=-1))),
        "greedy_top1": top1_agreement(fm, qm, prompt, run.tokens),
        "seed": int(seed),
    }
