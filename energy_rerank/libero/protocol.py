"""Which of a task's 50 fixed init states may be learnt from and which are kept for reported numbers.

Init states 0-29 may be used for demonstrations, on-policy collection and calibration; 30-49 are
held out for closed-loop numbers. `libero demos` refuses held-out states unless told otherwise,
records the init state of every demo in its files (`init_states`, one per demo_i), and `eval
libero --trained-on FILES` refuses to run an init state those files learnt from.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

NUM_INIT_STATES = 50  # fixed init states per LIBERO task (the suites' init files)
TRAIN_INIT_STATES = tuple(range(30))  # demonstrations, collection, calibration
HELD_OUT_INIT_STATES = tuple(range(30, NUM_INIT_STATES))  # closed-loop numbers that are reported
INIT_STATES_ATTR = "init_states"  # file attribute: the init state each demo_i started from, in order


def parse_init_states(text: str) -> tuple[int, ...]:
    """argparse type: '0-29' or '30,31,40-49' -> distinct init states in [0, 50), in the order given."""
    from energy_rerank.cli import int_list  # the project's one integer-list syntax

    try:
        states = int_list(text)
    except argparse.ArgumentTypeError as e:
        raise argparse.ArgumentTypeError(str(e).replace("--tasks: ", "")) from None
    bad = [i for i in states if not 0 <= i < NUM_INIT_STATES]
    if bad or not states or len(set(states)) < len(states):
        raise argparse.ArgumentTypeError(
            f"init states must be distinct ones of 0-{NUM_INIT_STATES - 1}, got {text!r}"
        )
    return states


def span(states: Sequence[int]) -> str:
    """(30, 31, 32, 40) -> '30-32,40': how reports and messages name a set of init states."""
    parts: list[str] = []
    ordered = sorted(set(states))
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts)


def recorded_init_states(path: str | Path) -> tuple[int, ...] | None:
    """The init states a rollout file's demos started from, or None when the file does not say."""
    from energy_rerank.rollouts.hdf5 import read_file_attrs

    value = read_file_attrs(path).get(INIT_STATES_ATTR)
    return None if value is None else tuple(int(i) for i in value)


def refuse_held_out(init_states: Sequence[int], allow: bool, flag: str = "--init-states") -> None:
    """Data that trains or calibrates must not start from a held-out init state (unless `allow`)."""
    held_out = sorted(set(init_states) & set(HELD_OUT_INIT_STATES))
    if held_out and not allow:
        raise SystemExit(
            f"{flag}: {span(held_out)} are held out for closed-loop numbers ({span(HELD_OUT_INIT_STATES)}); "
            f"use {span(TRAIN_INIT_STATES)}, or pass --allow-held-out"
        )


def check_held_out(init_states: Sequence[int], trained_on: Sequence[str | Path]) -> list[str]:
    """Raise ValueError if any of `init_states` is one the files learnt from; returns the files that
    record no init states (they cannot be checked; the caller says so)."""
    unknown: list[str] = []
    for path in trained_on:
        used = recorded_init_states(path)
        if used is None:
            unknown.append(str(path))
            continue
        overlap = sorted(set(used) & set(init_states))
        if overlap:
            raise ValueError(
                f"init states {span(overlap)} were used by {path} (its demos start from {span(used)}): "
                f"evaluate on init states it did not learn from, e.g. {span(HELD_OUT_INIT_STATES)}"
            )
    return unknown
