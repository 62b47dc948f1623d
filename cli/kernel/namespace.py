"""A user namespace that remembers which names were read, bound or deleted since it was last asked.

CPython looks globals up through ``__getitem__`` when the globals of the running code are a
dict *subclass* (LOAD_NAME, LOAD_GLOBAL, STORE_NAME, DELETE_NAME all take the slow path), so
replacing IPython's user namespace with this class sees every name a cell, or any function
defined in the notebook, uses. Two ways round it remain and are caught elsewhere: STORE_GLOBAL
and DELETE_GLOBAL (``global x; x = 1`` in a function) write the dict directly, which the
saver notices because the name's object identity changed; and objects reached through
something other than a name (a module attribute, a reference kept by C code), which the
saver's co-variable and opaque-object rules cover.
"""

from __future__ import annotations

import sys
import types
from contextlib import contextmanager
from typing import Any, Iterable, Iterator

_MISSING = object()


class _PythonTracking(dict):
    """The subscript slots in Python, where the C module could not be built."""

    touched: set

    def __getitem__(self, key: Any) -> Any:
        self.touched.add(key)
        return dict.__getitem__(self, key)

    def __setitem__(self, key: Any, value: Any) -> None:
        self.touched.add(key)
        dict.__setitem__(self, key, value)

    def __delitem__(self, key: Any) -> None:
        self.touched.add(key)
        dict.__delitem__(self, key)


try:  # the same three slots in C: a lookup costs a set insertion, not a Python call
    from cowfs.cli.kernel._tracking import TrackedDict as _Tracking
except ImportError:
    _Tracking = _PythonTracking


class TrackedNamespace(_Tracking):  # type: ignore[valid-type, misc]
    """A dict that records the keys it hands out or changes. ``everything`` is set when values
    were exposed wholesale (``values()``, ``items()``, ``copy()``, ``clear()``), after which no
    single name can be trusted to be untouched."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.touched = set()
        self.everything = False

    def drain(self) -> tuple[set[str], bool]:
        """What was touched since the last call, and whether everything must be assumed touched."""
        touched, everything = self.touched, self.everything
        self.touched, self.everything = set(), False
        return touched, everything

    @contextmanager
    def unrecorded(self) -> Iterator[None]:
        """Lookups the saver makes while pickling (cloudpickle reads a function's globals
        through the namespace) are not the cell's: they would make the next save revisit
        names nobody touched."""
        touched, everything = self.touched, self.everything
        self.touched = set()
        try:
            yield
        finally:
            self.touched, self.everything = touched, everything

    # -- single names, besides subscripts ----------------------------------------------------
    def get(self, key: Any, default: Any = None) -> Any:
        self.touched.add(key)
        return dict.get(self, key, default)

    def pop(self, key: Any, default: Any = _MISSING) -> Any:
        self.touched.add(key)
        return dict.pop(self, key) if default is _MISSING else dict.pop(self, key, default)

    def setdefault(self, key: Any, default: Any = None) -> Any:
        self.touched.add(key)
        return dict.setdefault(self, key, default)

    def popitem(self) -> tuple[Any, Any]:
        key, value = dict.popitem(self)
        self.touched.add(key)
        return key, value

    def update(self, *args: Any, **kwargs: Any) -> None:
        incoming = dict(*args, **kwargs)
        self.touched.update(incoming)
        dict.update(self, incoming)

    def __ior__(self, other: Any) -> "TrackedNamespace":
        self.update(other)
        return self

    # -- wholesale access --------------------------------------------------------------------
    def __iter__(self) -> Any:
        # Defining __iter__ makes dict(ns) and {**ns} take the slow path through keys() and
        # __getitem__ (CPython copies a dict with dict's own iterator directly), so they count.
        return dict.__iter__(self)

    def values(self) -> Any:
        self.everything = True
        return dict.values(self)

    def items(self) -> Any:
        self.everything = True
        return dict.items(self)

    def copy(self) -> dict:
        self.everything = True
        return dict.copy(self)

    def __or__(self, other: Any) -> dict:
        self.everything = True
        return dict.__or__(self, other)

    def clear(self) -> None:
        self.everything = True
        dict.clear(self)

    def __reduce__(self) -> Any:  # pickled as a plain dict: the tracking is this kernel's business
        self.everything = True
        return (dict, (dict(dict.items(self)),))


def install(shell: Any) -> TrackedNamespace:
    """Make ``shell``'s user namespace a ``TrackedNamespace`` (once), keeping every name.

    The user module is replaced by one whose ``__dict__`` is the tracked namespace, made by
    IPython itself as when it is given a ``user_ns``. Functions and methods the notebook
    defined before this call still hold the old dict as their globals; they are rebuilt on the
    new one, so they keep seeing (and changing) the same variables as the cells."""
    current = shell.user_ns
    if isinstance(current, TrackedNamespace):
        return current
    tracked = TrackedNamespace(dict.items(current))
    module, _ = shell.prepare_user_module(user_ns=tracked)
    old_module = shell.user_module
    shell.user_module = module
    shell.user_ns = tracked
    shell.ns_table["user_global"] = tracked
    shell.ns_table["user_local"] = tracked
    if sys.modules.get(tracked.get("__name__", "__main__")) is old_module:
        sys.modules[tracked.get("__name__", "__main__")] = module
    _rebind_functions(tracked, current, tracked)
    tracked.drain()
    return tracked


def _rebind_functions(namespace: dict, old_globals: dict, new_globals: dict) -> None:
    """Rebuild notebook functions (and methods of notebook classes) on ``new_globals``."""
    for name, value in list(dict.items(namespace)):
        if isinstance(value, types.FunctionType) and value.__globals__ is old_globals:
            dict.__setitem__(namespace, name, _rebound(value, new_globals))
        elif isinstance(value, type) and value.__module__ == new_globals.get("__name__"):
            for attr, member in list(vars(value).items()):
                if isinstance(member, types.FunctionType) and member.__globals__ is old_globals:
                    setattr(value, attr, _rebound(member, new_globals))


def _rebound(function: types.FunctionType, new_globals: dict) -> types.FunctionType:
    copy = types.FunctionType(function.__code__, new_globals, function.__name__, function.__defaults__,
                              function.__closure__)
    copy.__kwdefaults__ = function.__kwdefaults__
    copy.__dict__.update(function.__dict__)
    copy.__qualname__ = function.__qualname__
    copy.__doc__ = function.__doc__
    copy.__annotations__ = function.__annotations__
    copy.__module__ = function.__module__
    return copy


def user_names(namespace: dict, hidden: Iterable[str]) -> dict[str, Any]:
    """The user's variables, read without marking anything touched: IPython's own names
    (``In``, ``Out``, ``_``, ``_i3``...) and names it hides are not the user's state."""
    hidden = set(hidden)
    return {name: value for name, value in dict.items(namespace)
            if isinstance(name, str) and not name.startswith("_") and name not in hidden
            and name not in ("In", "Out", "exit", "quit", "get_ipython")}
