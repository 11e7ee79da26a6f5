"""The bundled example models (``--example NAME``): one registry for every model family.

The models are generated deterministically (nothing to download): the MLPs as torch modules
(``hwflow.mlp_examples``), the decoders as Hugging Face folders (``hwflow.llm_examples``).
This module imports neither, so the CLI can tell an example's family without loading torch.
"""

from __future__ import annotations

from hwflow.errors import HwflowError

__all__ = ["EXAMPLES", "example_kind", "examples_of", "example_help"]

#: name -> (model family, what it is). The family picks the compile flow: ``mlp``
#: (``hwflow.flow``) or ``decoder`` (``hwflow.llm_flow``).
EXAMPLES = {
    "mlp": ("mlp", "linear + ReLU MLP with a residual add"),
    "mlp-tiny": ("mlp", "sized for the iCE40 UP5K"),
    "mlp-sparse": ("mlp", "hidden layers pruned 2:4"),
    "mlp-mixed": ("mlp", "for --weights mixed"),
    "tiny-llama": ("decoder", "a random 2-layer LLaMA with grouped-query attention"),
    "tiny-bitnet": ("decoder", "a random 2-layer BitNet b1.58"),
    "tiny-mamba": ("decoder", "a random 2-layer Mamba (selective state-space model)"),
}


def examples_of(kind: str) -> tuple:
    """The names of the examples of model family ``kind`` (``"mlp"`` or ``"decoder"``)."""
    return tuple(name for name, (k, _) in EXAMPLES.items() if k == kind)


def example_kind(name: str) -> str:
    """The model family of example ``name``.

    Raises
    ------
    HwflowError
        An unknown name (the message lists every example).
    """
    if name not in EXAMPLES:
        raise HwflowError(f"unknown example '{name}' (known: {', '.join(EXAMPLES)})")
    return EXAMPLES[name][0]


def example_help() -> str:
    """``name (what it is), ...`` for the CLI's ``--example`` help."""
    return ", ".join(f"{name} ({what})" for name, (_, what) in EXAMPLES.items())
