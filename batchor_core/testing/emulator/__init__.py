"""An OpenAI Files + Batches API emulator for offline tests.

See :class:`OpenAIEmulator` for the server and :class:`FaultPlan` for fault scripting.
Run it standalone with ``python -m batchor_core.testing.emulator --port 8765``.
"""

from .emulator import OpenAIEmulator
from .faults import FaultPlan, LineFaultKind, LineFaultRule, compile_path
from .lifecycle import ProcessingMode

__all__ = [
    "FaultPlan",
    "LineFaultKind",
    "LineFaultRule",
    "OpenAIEmulator",
    "ProcessingMode",
    "compile_path",
]
