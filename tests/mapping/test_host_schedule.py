"""mapping.host_schedule: the runs the host makes for a prompt and its decode steps, the one
schedule that ``hwflow.host.generate``, the RTL simulation and the TTFT prediction follow."""

from __future__ import annotations

import numpy as np
import pytest

from hwflow.mapping.host_schedule import HostRun, host_schedule, program_name, run_program
from hwflow.mapping.llm_lower import lower_decoder

from .test_llm_lower import CFG, random_decoder

BUCKETS = (8, 16)


@pytest.fixture(scope="module")
def low():
    return lower_decoder(random_decoder(), CFG, shape_only=True)


def test_prefill_chunks_follow_the_host(low):
    big = low.buckets[-1]

    def chunks(n):
        return [r[:3] for r in host_schedule(n, low.buckets)]

    # the last prompt token is a run's last row: shorter than the smallest bucket, token by
    # token; a rest that is no bucket, the smallest bucket ending on the last token
    assert low.buckets[0] == 8
    assert chunks(5) == [(p, 1, "decode") for p in range(5)]
    assert chunks(8) == [(0, 8, "prefill8")]
    assert chunks(big + 1) == [(0, big, f"prefill{big}"), (big, 1, "decode")]
    assert chunks(big + 5) == [(0, big, f"prefill{big}"), (big - 3, 8, "prefill8")]
    runs = chunks(50)
    assert runs[-1][0] + runs[-1][1] == 50 and all(p + k <= 50 for p, k, _ in runs)


@pytest.mark.parametrize("n, prompt", [
    (5, [(p, 1, "decode") for p in range(5)]),                 # shorter than the largest
    (12, [(0, 8, "prefill8"), (4, 8, "prefill8")]),             # 16 > 12: 8, 8 recomputing 4
    (16, [(0, 16, "prefill16")]),                               # equal to the largest
    (21, [(0, 16, "prefill16"), (13, 8, "prefill8")]),          # longer than the largest
    (33, [(0, 16, "prefill16"), (16, 16, "prefill16"), (32, 1, "decode")]),
])
@pytest.mark.parametrize("new", [0, 3])
def test_prompt_runs_then_decode_steps(n, prompt, new):
    runs = host_schedule(n, BUCKETS, new)
    assert all(isinstance(r, HostRun) for r in runs)
    assert runs == [HostRun(p, k, name, False) for p, k, name in prompt] + \
        [HostRun(n + k, 1, "decode", True) for k in range(new)]
    # no run is padded, the prompt's last run ends on its last token, decode steps follow it
    assert all(r.program == program_name(r.tokens) for r in runs)
    last = runs[len(prompt) - 1]
    assert last.pos + last.tokens == n
    assert [r for r in runs if r.pos + r.tokens >= n] == runs[len(prompt) - 1:]


def test_zero_new_tokens_is_the_prompt_alone():
    assert host_schedule(21, BUCKETS) == host_schedule(21, BUCKETS, 0)
    assert not any(r.is_decode for r in host_schedule(21, BUCKETS))
    assert host_schedule(0, BUCKETS) == []


def test_run_program_names_the_lowered_programs(low):
    assert program_name(1) == "decode" and program_name(16) == "prefill16"
    assert run_program(low, "decode") is low.decode
    for b in low.buckets:
        assert run_program(low, program_name(b)) is low.prefill[b]


def test_host_writes_follow_the_schedule():
    """Each run of the schedule with the host's writes: the prompt's token ids at the run's
    position, a placeholder id for each decode step (the previous run's argmax, known later)."""
    from hwflow.mapping.host_schedule import host_writes

    lw = lower_decoder(random_decoder(), CFG)
    prompt = list(range(1, 12))
    steps = host_writes(lw, prompt, 3)
    runs = host_schedule(len(prompt), lw.buckets, 3)
    assert [(st.pos, st.tokens, d) for st, d in steps] == [(r.pos, r.tokens, r.is_decode)
                                                          for r in runs]
    first, _ = steps[0]
    ids = np.frombuffer(first.writes[0][1][:4 * first.tokens], "<u4")
    assert list(ids) == prompt[:first.tokens]
