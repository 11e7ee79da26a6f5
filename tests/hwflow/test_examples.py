"""hwflow.examples: one registry of the bundled examples, whatever their model family."""

from __future__ import annotations

import pytest

from hwflow.errors import HwflowError
from hwflow.examples import EXAMPLES, example_kind, examples_of


def test_the_registry_is_what_the_generators_make():
    from hwflow.llm_examples import LLM_EXAMPLES, write_example
    from hwflow.mlp_examples import MLP_BUILDERS

    assert set(examples_of("mlp")) == set(MLP_BUILDERS)
    assert LLM_EXAMPLES == examples_of("decoder")
    assert set(EXAMPLES) == set(MLP_BUILDERS) | set(LLM_EXAMPLES)
    assert {example_kind(n) for n in EXAMPLES} == {"mlp", "decoder"}
    with pytest.raises(ValueError, match="unknown example"):
        write_example("mlp", "/nonexistent")


def test_an_unknown_example_names_every_family(capfd):
    """Once the error listed the MLP examples only (two registries)."""
    from hwflow.cli import main

    with pytest.raises(HwflowError, match="tiny-llama, tiny-bitnet"):
        example_kind("tiny-gpt")
    assert main(["compile", "--example", "tiny-gpt", "--board", "u280"]) == 2
    err = capfd.readouterr().err.strip()
    assert err.count("\n") == 0 and "mlp-mixed" in err and "tiny-bitnet" in err, err
