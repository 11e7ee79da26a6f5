"""Tiny LLaMA builders for the decoder tests (a thin re-export of :mod:`hwflow.llm_examples`)."""

from __future__ import annotations

from hwflow.llm_examples import TINY_LLAMA, tiny_llama_config, write_tiny_llama

__all__ = ["TINY_LLAMA", "tiny_llama", "tiny_llama_config"]


def tiny_llama(folder, seed: int = 0, **overrides):
    """Write the tiny LLaMA (vocab 320, hidden 120, 2 layers, 6/2 heads) into ``folder``."""
    return write_tiny_llama(folder, seed=seed, **overrides)
