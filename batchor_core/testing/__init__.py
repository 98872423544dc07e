"""Test helpers that ship with batchor, so users can test offline too.

:class:`OpenAIEmulator` is a local, deterministic OpenAI Files + Batches API server with
scripted faults (:class:`FaultPlan`); point the official ``openai`` SDK at its ``base_url``.
"""

from .emulator import FaultPlan, LineFaultKind, LineFaultRule, OpenAIEmulator, ProcessingMode

__all__ = [
    "FaultPlan",
    "LineFaultKind",
    "LineFaultRule",
    "OpenAIEmulator",
    "ProcessingMode",
]
