"""Pickling a group of variables: a small skeleton, big buffers out of band, and what it shares.

Pickle protocol 5 hands numpy and pandas buffers to a callback instead of copying them into
the pickle, so the skeleton of a 1 GiB frame is a few hundred bytes made in under a
millisecond, and the buffers can be compared block by block and written where they changed.
The pickler's memo, read afterwards, tells which live mutable objects the group reaches: two
variables that reach one object (or two arrays over one memory block) are co-variables, and
a change through one name must make the saver look at the other.
"""

from __future__ import annotations

import io
import pickle
import sys
import types
from dataclasses import dataclass, field
from typing import Any

import cloudpickle

OUT_OF_BAND_MIN = 64 * 1024  # smaller buffers stay in the skeleton: one file write beats two

# Objects of these types cannot change in place, so sharing one never links two variables.
_IMMUTABLE = (str, bytes, int, float, complex, bool, type(None), tuple, frozenset, range, slice,
              type(Ellipsis), type(NotImplemented), types.BuiltinFunctionType, types.CodeType)
# Modules whose C types keep all their state where pickling sees it and are only changed
# through the object itself (so through a name the namespace saw).
_TRANSPARENT_C_MODULES = ("builtins", "numpy", "collections", "datetime", "decimal", "fractions",
                          "array", "re", "uuid", "pandas", "functools", "itertools", "_collections",
                          "_decimal", "_datetime", "zoneinfo", "pathlib", "enum", "io")
_HEAPTYPE = 1 << 9


@dataclass
class Capture:
    """One group pickled: ``skeleton`` plus ``buffers`` (read-only views of live memory, valid
    while the values live and do not change), the ids of the live mutable objects and memory
    blocks it reaches, and whether it holds state pickling cannot be trusted to see change."""

    skeleton: bytes
    buffers: list[memoryview] = field(default_factory=list)
    reaches: frozenset[int] = frozenset()
    opaque: bool = False


class _Pickler(cloudpickle.Pickler):
    def __init__(self, sink: io.BytesIO, buffers: list[pickle.PickleBuffer], out_of_band: bool) -> None:
        roots: set[int] = set()

        def take_buffer(buffer: pickle.PickleBuffer) -> bool:
            # A closure, not a bound method: the pickler holding its own method would be a
            # reference cycle that keeps the memo, and every array pickled, alive until the
            # cyclic collector happens to run (a column-sized leak per save, seen in RSS).
            view = buffer.raw()
            roots.add(id(memory_root(view.obj)))
            if view.nbytes < OUT_OF_BAND_MIN or not out_of_band:
                return True  # in band
            buffers.append(buffer)
            return False

        super().__init__(sink, protocol=5, buffer_callback=take_buffer)
        self.memory_roots = roots
        self.opaque = False

    def reducer_override(self, obj: Any) -> Any:
        kind = type(obj)
        if getattr(obj, "base", None) is not None and hasattr(obj, "__array_interface__"):
            self.memory_roots.add(id(memory_root(obj)))  # views and slices of one array block
        elif not self.opaque and _is_opaque_type(kind) and not _pickled_by_reference(obj):
            self.opaque = True
        return super().reducer_override(obj)


def memory_root(obj: Any) -> Any:
    """The object that owns the memory an array (or a view of one) looks at."""
    for _ in range(64):  # numpy keeps chains short; the bound only guards odd exporters
        base = getattr(obj, "base", None)
        if base is None or base is obj:
            break
        obj = base
    return obj


def _is_opaque_type(kind: type) -> bool:
    for klass in kind.__mro__:
        if klass is object or klass.__flags__ & _HEAPTYPE:
            continue
        module = (getattr(klass, "__module__", "") or "").split(".")[0]
        if module not in _TRANSPARENT_C_MODULES:
            return True
    return False


def _pickled_by_reference(obj: Any) -> bool:
    """Classes, functions and other callables from modules are names, not state."""
    return isinstance(obj, type) or callable(obj) and hasattr(obj, "__qualname__") \
        and getattr(obj, "__module__", "__main__") not in ("__main__", None)


def capture(values: tuple[Any, ...], out_of_band: bool = True) -> Capture:
    """Pickle ``values`` together (so objects shared between them stay shared when loaded)."""
    sink = io.BytesIO()
    buffers: list[pickle.PickleBuffer] = []
    pickler = _Pickler(sink, buffers, out_of_band)
    pickler.dump(values)
    memo = pickler.memo.copy()
    roots, opaque = pickler.memory_roots, pickler.opaque
    pickler.clear_memo()
    del pickler
    reaches = set(roots)
    for _, obj in memo.values():
        if _shareable(obj) and sys.getrefcount(obj) > _TEMPORARY_REFS:
            reaches.add(id(obj))
    return Capture(sink.getvalue(), [b.raw() for b in buffers], frozenset(reaches), opaque)


# A temporary made by a __reduce__ is referenced only by the memo copy, the loop variable and
# getrefcount's argument; anything referenced once more lives on after pickling.
_TEMPORARY_REFS = 3


def _shareable(obj: Any) -> bool:
    """Could a change to ``obj`` through one variable show through another that reaches it?"""
    if isinstance(obj, _IMMUTABLE):
        return False
    if isinstance(obj, type) or callable(obj) and not isinstance(obj, types.FunctionType):
        return getattr(obj, "__module__", None) == "__main__"
    if isinstance(obj, types.FunctionType):
        return obj.__module__ == "__main__"
    for klass in type(obj).__mro__:  # dtypes are shared singletons that never change
        if (klass.__module__, klass.__name__) in (("numpy", "dtype"), ("pandas.core.dtypes.base", "ExtensionDtype")):
            return False
    return True


def load(skeleton: bytes, buffers: list[bytearray]) -> tuple[Any, ...]:
    return cloudpickle.loads(skeleton, buffers=buffers)
