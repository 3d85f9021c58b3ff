"""Handlers for the fan-in (join) tests."""

from __future__ import annotations

from typing import Any

from rrq_flow import Fatal, current_job


async def items(n: int) -> list[int]:
    return list(range(n))


async def work(x: int) -> int:
    return x * 2


async def work_or_die(x: int) -> int:
    """Branches whose item is 7 mod 50 die (Fatal): 10 of 500."""
    if x % 50 == 7:
        raise Fatal(f"item {x} is poison")
    return x * 2


async def work_or_none(x: int) -> int | None:
    """Odd items end their branch early (None)."""
    return None if x % 2 else x


async def sub_items(x: int) -> list[int]:
    return [x * 10 + k for k in range(3)]


async def gather(values: list[Any]) -> dict[str, Any]:
    group = current_job().group
    return {"values": values, "group": group.as_dict() if group else None}


async def total(values: list[int]) -> int:
    return sum(values)


async def big(x: int) -> str:
    return "x" * 400


def gather_in_process(values: list[Any]) -> dict[str, Any]:
    """The join as an ``executor: process`` handler: the group reaches the handler's process."""
    group = current_job().group
    return {"values": values, "size": group.size if group else None}
