"""Test helpers that ship with batchor, so users can test offline too.

:class:`OpenAIEmulator` is a local, deterministic OpenAI Files + Batches API server with
scripted faults (:class:`FaultPlan`); point the official ``openai`` SDK at its ``base_url``.
:class:`FakeBatchProvider` is an in-memory provider (no sockets, no threads) for fast unit
tests of code built on :class:`~batchor_core.BatchRunner`.
"""

from .emulator import FaultPlan, LineFaultKind, LineFaultRule, OpenAIEmulator, ProcessingMode
from .fakes import FakeBatchProvider

__all__ = [
    "FakeBatchProvider",
    "FaultPlan",
    "LineFaultKind",
    "LineFaultRule",
    "OpenAIEmulator",
    "ProcessingMode",
]
