"""The global torch state a call of someone else's code starts clean in, and the limit on its time.

The conformance kit (:mod:`properties.conformance`) calls users' LRP code as a
black box.  :func:`clean_global_state` runs such a call in torch's default
global state and restores the caller's afterwards, naming what the call
changed; :func:`time_limit` interrupts a call that runs too long.

The state (:data:`GLOBAL_STATE`): the default dtype (float32), the default
device (cpu), grad mode (on), anomaly detection (off, ``check_nan`` on),
deterministic algorithms (off, not warn-only), the intra-op thread count
(the caller's: 1 under the kit) and torch's global RNG (seeded with
:data:`CALL_RNG_SEED`).  Not covered: inter-op threads (torch cannot set
them twice), an inference mode entered and never left, CUDA RNGs.
"""

from __future__ import annotations

import contextlib
import functools
import signal
import threading
import time
import types
from collections.abc import Iterator
from typing import Any, NoReturn

import torch

__all__ = ["GLOBAL_STATE", "CALL_RNG_SEED", "clean_global_state", "time_limit", "CallTimeout"]

#: seed of torch's global RNG at the start of every call (the clean state's RNG)
CALL_RNG_SEED = 0
#: the global torch state each call starts clean in and is checked for afterwards, as named in counterexamples
GLOBAL_STATE = ("torch default dtype", "torch default device", "grad mode", "anomaly detection",
                "deterministic algorithms", "torch threads", "torch global RNG")


def _read_global_state() -> dict:
    return {
        "torch default dtype": torch.get_default_dtype(),
        "torch default device": torch.get_default_device(),
        "grad mode": torch.is_grad_enabled(),
        "anomaly detection": (torch.is_anomaly_enabled(), torch.is_anomaly_check_nan_enabled()),
        "deterministic algorithms": (torch.are_deterministic_algorithms_enabled(),
                                     torch.is_deterministic_algorithms_warn_only_enabled()),
        "torch threads": torch.get_num_threads(),
        "torch global RNG": torch.random.get_rng_state(),
    }


def _apply_global_state(state: dict) -> None:
    torch.set_default_dtype(state["torch default dtype"])
    device = state["torch default device"]
    if torch.get_default_device() != device:  # a default device is a torch function mode: none for the cpu
        torch.set_default_device(None if device == torch.device("cpu") else device)
    torch.set_grad_enabled(state["grad mode"])
    torch.autograd.set_detect_anomaly(*state["anomaly detection"])
    torch.use_deterministic_algorithms(state["deterministic algorithms"][0],
                                       warn_only=state["deterministic algorithms"][1])
    if torch.get_num_threads() != state["torch threads"]:
        torch.set_num_threads(state["torch threads"])
    torch.random.set_rng_state(state["torch global RNG"])


@functools.lru_cache(maxsize=1)
def _clean_rng_state() -> torch.Tensor:
    return torch.Generator(device="cpu").manual_seed(CALL_RNG_SEED).get_state()


def _clean_global_state() -> dict:
    """The state every call starts in: torch's defaults, this process's thread count, a seeded global RNG."""
    return {"torch default dtype": torch.float32, "torch default device": torch.device("cpu"), "grad mode": True,
            "anomaly detection": (False, True), "deterministic algorithms": (False, False),
            "torch threads": torch.get_num_threads(), "torch global RNG": _clean_rng_state()}


def _state_text(name: str, value: Any) -> str:  # a value of the state named `name` (a dtype, a flag, a pair)
    if name == "torch default dtype":
        return str(value).replace("torch.", "")
    if name == "grad mode":
        return "enabled" if value else "disabled"
    if name == "anomaly detection":
        return ("on" if value[0] else "off") + ("" if value[1] else " (check_nan off)")
    if name == "deterministic algorithms":
        return ("on" if value[0] else "off") + (" (warn only)" if value[1] else "")
    return str(value)


def _state_changes(before: dict, after: dict) -> list[str]:
    """What differs between two global states, one phrase each (``"torch default dtype float32 -> float64"``)."""
    changes = []
    for name in GLOBAL_STATE:
        old, new = before[name], after[name]
        if name == "torch global RNG":
            if not torch.equal(old, new):
                changes.append("torch global RNG advanced (the implementation drew from torch's global generator; "
                               "use a local torch.Generator)")
        elif old != new:
            changes.append(f"{name} {_state_text(name, old)} \u2192 {_state_text(name, new)}")
    return changes


@contextlib.contextmanager
def clean_global_state() -> Iterator[list[str]]:
    """Run a block in the clean global torch state; yields a list that receives the block's changes to it.

    The caller's state is restored afterwards, also when the block raises.
    """
    outer = _read_global_state()
    clean = _clean_global_state()
    changes: list[str] = []
    _apply_global_state(clean)
    try:
        yield changes
    finally:
        changes += _state_changes(clean, _read_global_state())
        _apply_global_state(outer)


class CallTimeout(BaseException):
    """Raised inside a call by the alarm (a BaseException, so the
    implementation's ``except Exception`` lets it pass)."""


@contextlib.contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Interrupt the block after ``seconds`` (SIGALRM, in the main thread where no other alarm is set; elsewhere the
    time is checked when the block returns)."""
    if seconds is None:
        yield
        return
    usable = (hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
              and signal.getsignal(signal.SIGALRM) in (signal.SIG_DFL, signal.SIG_IGN, None)
              and signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0))
    if not usable:
        start = time.monotonic()
        yield
        if time.monotonic() - start > seconds:
            raise CallTimeout()
        return

    def alarm(signum: int, frame: types.FrameType | None) -> NoReturn:
        raise CallTimeout()

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
