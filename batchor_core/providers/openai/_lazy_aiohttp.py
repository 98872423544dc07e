"""Keep ``aiohttp`` out of ``import openai`` unless an aiohttp client is actually made.

The SDK offers an optional aiohttp transport (``openai.DefaultAioHttpClient``). When
aiohttp is installed (s3fs, a dev extra, pulls it in), ``import openai`` imports it
eagerly: the vendored ``httpx_aiohttp`` package's ``__init__`` imports its transport
module, which imports aiohttp, yarl, multidict and friends. batchor never uses that
transport, and it costs a run about 9 MB of memory (a tenth of a 100k run's peak) and
0.2 s of imports.

The vendored client class itself loads the transport only when a client is built, so this
finder loads that package with a lazy ``__init__``: ``Httpx2AiohttpClient`` is the SDK's
own class, imported straight away (the SDK subclasses it while importing); any other
name (``AiohttpTransport``) runs the package's real ``__init__`` on first access. A user
of ``openai.DefaultAioHttpClient`` in the same process sees no difference: aiohttp loads
when their client is built. Where the layout is not the one expected (another SDK
version, aiohttp not installed) the SDK's own import runs unchanged.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import threading
from collections.abc import Sequence
from types import ModuleType

__all__ = ["install"]

_VENDORED = "openai._vendor.httpx_aiohttp"
_CLIENT = "Httpx2AiohttpClient"


class _LazyInitLoader(importlib.abc.Loader):
    """Runs the vendored package's ``__init__`` only when a name other than the client is used."""

    def __init__(self, real: importlib.abc.Loader) -> None:
        self._real = real

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._real.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        try:
            client = importlib.import_module(f"{module.__name__}.client")
            cls = getattr(client, _CLIENT)
        except (ImportError, AttributeError):  # not the layout we know: the real thing
            self._real.exec_module(module)
            return
        real = self._real
        lock = threading.Lock()

        def __getattr__(name: str) -> object:  # the module's own __getattr__
            if name.startswith("__"):
                raise AttributeError(name)
            with lock:
                if "__getattr__" in vars(module):
                    delattr(module, "__getattr__")
                    real.exec_module(module)  # imports the transport (and aiohttp)
            return getattr(module, name)

        setattr(module, _CLIENT, cls)
        setattr(module, "__getattr__", __getattr__)  # noqa: B010  (mypy: a method of ModuleType)


class _DeferAiohttp(importlib.abc.MetaPathFinder):
    """Hands the vendored package a lazy loader once; inert afterwards."""

    def __init__(self) -> None:
        self.used = False

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != _VENDORED or self.used:
            return None
        self.used = True
        # Without aiohttp the real __init__ fails to import, and the SDK falls back to a
        # client that explains the missing extra: keep that behaviour.
        if importlib.util.find_spec("aiohttp") is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None or spec.submodule_search_locations is None:
            return None
        spec.loader = _LazyInitLoader(spec.loader)
        return spec


_installed = False


def install() -> None:
    """Defer aiohttp for the SDK's next import (nothing to do once ``openai`` is loaded)."""
    global _installed
    if _installed or "openai" in sys.modules or "aiohttp" in sys.modules:
        return
    _installed = True
    sys.meta_path.insert(0, _DeferAiohttp())
