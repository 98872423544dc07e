"""Artifact stores: request JSONL and raw provider outputs."""

from batchor_core.artifacts.local import LocalArtifactStore

__all__ = ["LocalArtifactStore"]
