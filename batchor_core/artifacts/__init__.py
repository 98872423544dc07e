"""Artifact stores: request JSONL and raw provider outputs.

:class:`LocalArtifactStore` keeps them in a local directory; :class:`FsspecArtifactStore`
on object storage (S3, GCS, Azure) or any fsspec filesystem, so runs can be carried by
several hosts. fsspec is imported only when an :class:`FsspecArtifactStore` is built.
"""

from batchor_core.artifacts.fsspec_store import FsspecArtifactStore
from batchor_core.artifacts.local import LocalArtifactStore

__all__ = ["FsspecArtifactStore", "LocalArtifactStore"]
