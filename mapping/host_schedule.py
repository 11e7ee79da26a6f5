"""The host's run schedule of a lowered decoder: which program runs at which position.

A generation is the prompt, split into runs by :func:`hwflow.mapping.llm_lower.prompt_runs`
(runs of the largest prefill bucket, the last one ending on the prompt's last token, the only
row whose logits a program computes), then one decode step per new token at positions
``n, n + 1, ...``. From the prompt's last run on, each run's argmax is the next token: the
next decode step's input. The host (``hwflow.host.generate``), the RTL simulation
(``hwflow.simulate``) and the prediction of time to first token (``hwflow.predict``) all run
this one schedule, so the cycles predicted are those of the runs made.
"""

from __future__ import annotations

from typing import NamedTuple

from .llm_lower import prompt_runs

__all__ = ["HostRun", "host_schedule", "host_writes", "program_name", "run_program"]


class HostRun(NamedTuple):
    """One run of a program by the host.

    Attributes
    ----------
    pos : int
        POS: the position of the run's first token.
    tokens : int
        Tokens in the run (no run is padded: every run's last row is a real token).
    program : str
        ``"decode"`` (one token) or ``"prefillB"`` (a prefill bucket of ``B`` rows).
    is_decode : bool
        A decode step after the prompt (its token is the previous run's argmax), not a run
        of prompt tokens (a one-token prompt run also runs the decode program).
    """

    pos: int
    tokens: int
    program: str
    is_decode: bool


def program_name(tokens: int) -> str:
    """The program that runs ``tokens`` tokens unpadded: ``"decode"`` for one, else the bucket.

    Parameters
    ----------
    tokens : int
        A run's length: 1 or a prefill bucket (:func:`host_schedule`'s runs are).

    Returns
    -------
    str
        ``"decode"`` or ``f"prefill{tokens}"``.
    """
    return "decode" if tokens == 1 else f"prefill{tokens}"


def run_program(lowered, name: str):
    """The program named ``name`` (:func:`program_name`) of a lowered decoder.

    Parameters
    ----------
    lowered : hwflow.mapping.llm_lower.LoweredDecoder
        The decoder (a shape-only lowering too).
    name : str
        ``"decode"`` or ``"prefillB"``.

    Returns
    -------
    hwflow.mapping.llm_lower.ProgramInfo
        ``lowered.decode`` or ``lowered.prefill[B]``.
    """
    if name == "decode":
        return lowered.decode
    return lowered.prefill[int(name.removeprefix("prefill"))]


def host_schedule(prompt_len: int, buckets, new_tokens: int = 0,
                  recurrent: bool = False) -> list[HostRun]:
    """The runs the host makes for a ``prompt_len``-token prompt and ``new_tokens`` decode steps.

    Parameters
    ----------
    prompt_len : int
        Tokens in the prompt (``>= 1`` for any run to be made).
    buckets : iterable of int
        The prefill buckets (``LoweredDecoder.buckets``).
    new_tokens : int
        Decode steps after the prompt (``0``: the prompt's runs alone, as time to first
        token counts them).
    recurrent : bool
        A state-space model's runs (``LoweredDecoder.recurrent``): the prompt's runs do not
        overlap.

    Returns
    -------
    list of HostRun
        The prompt's runs (:func:`hwflow.mapping.llm_lower.prompt_runs`, ``is_decode`` False),
        then ``new_tokens`` one-token decode runs at ``prompt_len, prompt_len + 1, ...``.
        Every run from the prompt's last one on gives the next token.
    """
    runs = [HostRun(p, k, program_name(k), False)
            for p, k in prompt_runs(prompt_len, buckets, recurrent)]
    runs += [HostRun(prompt_len + k, 1, "decode", True) for k in range(new_tokens)]
    return runs


def host_writes(lw, prompt: list[int], new_tokens: int) -> list:
    """``[(HostStep, is_decode)]``: the runs of :func:`host_schedule` of a lowered decoder with
    the host's memory writes of each (``llm_lower.decode_memory_writes``: the token ids), for
    a ``prompt`` and ``new_tokens`` decode steps; a decode step's id is the previous run's
    argmax, written when known (0 here)."""
    from .llm_lower import decode_memory_writes

    # a decode step's id is written by the host after the previous step; 0 is a placeholder
    return [(decode_memory_writes(lw, [0] if r.is_decode else prompt[r.pos:r.pos + r.tokens],
                                  r.pos), r.is_decode)
            for r in host_schedule(len(prompt), lw.buckets, new_tokens, lw.recurrent)]
