"""Budgets a team states -- the most latency, file and transfer a device can take -- as
constraints applied before the objective (objective.select): a variant over one is not eligible.

Plain numbers in, words out; the limits live on the Objective (max_latency_ms, max_file_kb,
max_transfer_kb), so they travel with it in results.json and `choose` applies them again.
"""

from __future__ import annotations

from typing import Protocol

KB = 1024  # a budget's KB are 1024 bytes


class HasBudgets(Protocol):
    @property
    def max_latency_ms(self) -> float | None: ...
    @property
    def max_file_kb(self) -> float | None: ...
    @property
    def max_transfer_kb(self) -> float | None: ...


def has_budget(limits: HasBudgets) -> bool:
    return any(b is not None for b in (limits.max_latency_ms, limits.max_file_kb, limits.max_transfer_kb))


def describe_budgets(limits: HasBudgets) -> str:
    """"at most 2 ms per image and 500 KB of file" ("" without a budget)."""
    parts = [f"{value:g} {unit}" for value, unit in ((limits.max_latency_ms, "ms per image"), (limits.max_file_kb, "KB of file"),
                                                     (limits.max_transfer_kb, "KB of transfer")) if value is not None]
    return "at most " + " and ".join(parts) if parts else ""


def over_budget(limits: HasBudgets, latency_ms: float, file_bytes: float, transfer_bytes: float | None) -> str:
    """Every budget a variant breaks, in words ("" when it fits them all). Without a transfer
    size measured, the file is what a delivery sends."""
    broken = []
    if limits.max_latency_ms is not None and latency_ms > limits.max_latency_ms:
        broken.append(f"takes {latency_ms:.2f} ms, over the latency budget of {limits.max_latency_ms:g} ms")
    if limits.max_file_kb is not None and file_bytes > limits.max_file_kb * KB:
        broken.append(f"is {file_bytes / KB:.0f} KB, over the file budget of {limits.max_file_kb:g} KB")
    sent = transfer_bytes or file_bytes
    if limits.max_transfer_kb is not None and sent > limits.max_transfer_kb * KB:
        broken.append(f"sends {sent / KB:.0f} KB, over the transfer budget of {limits.max_transfer_kb:g} KB")
    return ", and ".join(broken)
