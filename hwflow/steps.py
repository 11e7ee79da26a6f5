"""Flows as step lists: a flow is an ordered tuple of ``(step name, step function)``, each
function filling in its products on a job object (the FINN builder's idea).

``hwflow compile`` of an MLP runs ``hwflow.flow.MLP_STEPS``, of a decoder
``hwflow.llm_flow.DECODER_STEPS``, a shape-only compile ``hwflow.llm_flow.SHAPE_STEPS``; a sweep
point and the cycle-model calibration run selections of them on engines of their own.
"""

from __future__ import annotations

__all__ = ["run_steps", "step_names"]


def step_names(steps) -> list[str]:
    """The names of a step list, in order."""
    return [n for n, _ in steps]


def run_steps(job, steps, select=None, log=None):
    """Run ``steps`` (``(name, function)`` pairs) on ``job`` in order; returns ``job``.

    Parameters
    ----------
    job : object
        The flow's job: the request, then each step's products.
    steps : sequence of (str, callable)
        The step list; each function takes the job.
    select : iterable of str, optional
        Run only these steps (in the list's order); default all.
    log : callable, optional
        Called with each step's name after it ran.

    Returns
    -------
    object
        ``job``. Its ``close()`` (when it has one) runs after the last step, or after a step
        that raised: temporary files a step made do not outlive the flow.

    Raises
    ------
    ValueError
        ``select`` names a step the list does not have (a programming error).
    """
    names = step_names(steps)
    unknown = set(select or ()) - set(names)
    if unknown:
        raise ValueError(f"unknown steps {sorted(unknown)} (steps: {', '.join(names)})")
    try:
        for name, step in steps:
            if select is None or name in select:
                step(job)
                if log is not None:
                    log(name)
    finally:
        close = getattr(job, "close", None)
        if close is not None:
            close()
    return job
