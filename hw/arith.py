"""Small arithmetic building blocks shared by the hardware units."""

from __future__ import annotations

__all__ = ["tree_sum"]


def tree_sum(terms):
    """Balanced adder tree over Amaranth values: log2 depth instead of a chain of
    ``len(terms)`` adders (Amaranth widens each adder by one bit)."""
    terms = list(terms)
    while len(terms) > 1:
        nxt = [terms[i] + terms[i + 1] for i in range(0, len(terms) - 1, 2)]
        if len(terms) % 2:
            nxt.append(terms[-1])
        terms = nxt
    return terms[0]
