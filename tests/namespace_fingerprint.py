"""A canonical description of a namespace's values, computed the same way in a kernel (the
truth, right after a cell) and in the test (on what a restore brought back).

It reads the namespace with ``dict.items`` so that asking does not count as touching: the
kernel's tracking must find the changes on its own.
"""

from __future__ import annotations

import hashlib
import json
import random
import types
from typing import Any


def describe(namespace: dict) -> str:
    names = {name: value for name, value in dict.items(namespace)
             if isinstance(name, str) and not name.startswith("_")
             and name not in ("In", "Out", "exit", "quit", "get_ipython", "open")}
    found = {name: _fingerprint(value, 0) for name, value in sorted(names.items())}
    ordered = sorted(names)
    same = [[a, b] for i, a in enumerate(ordered) for b in ordered[i + 1:]
            if names[a] is names[b] and not isinstance(names[a], (int, str, float, bool, types.ModuleType))
            and names[a] is not None]
    return json.dumps({"values": found, "identical": same}, sort_keys=True)


def _fingerprint(value: Any, depth: int) -> Any:
    if depth > 8:
        return "..."
    kind = type(value)
    if isinstance(value, types.ModuleType):
        return ["module", value.__name__]
    if kind.__module__ == "numpy" and kind.__name__ == "ndarray":
        return ["ndarray", str(value.dtype), list(value.shape), hashlib.sha256(value.tobytes()).hexdigest()]
    if kind.__name__ == "DataFrame":
        return ["DataFrame", [str(c) for c in value.columns], [str(d) for d in value.dtypes],
                _fingerprint(value.to_numpy(), depth + 1), [str(i) for i in value.index[:5]]]
    if kind.__name__ == "Series":
        return ["Series", str(value.name), _fingerprint(value.to_numpy(), depth + 1)]
    if isinstance(value, (list, tuple)):
        return [kind.__name__, [_fingerprint(v, depth + 1) for v in value]]
    if isinstance(value, dict):
        return ["dict", sorted([repr(k), _fingerprint(v, depth + 1)] for k, v in value.items())]
    if isinstance(value, (set, frozenset)):
        return [kind.__name__, sorted(repr(v) for v in value)]
    if isinstance(value, types.FunctionType):
        return ["function", value.__qualname__, hashlib.sha256(value.__code__.co_code).hexdigest(),
                _fingerprint(value.__defaults__, depth + 1)]
    if isinstance(value, random.Random):
        return ["Random", hashlib.sha256(repr(value.getstate()).encode()).hexdigest()]
    if isinstance(value, types.MethodType):
        return ["method", value.__func__.__qualname__, _fingerprint(value.__self__, depth + 1)]
    if isinstance(value, types.BuiltinMethodType) and not isinstance(value.__self__, (types.ModuleType, type(None))):
        return ["method", value.__qualname__, _fingerprint(value.__self__, depth + 1)]
    if isinstance(value, type):
        attrs = {k: v for k, v in vars(value).items() if not k.startswith("__") and not callable(v)}
        return ["class", value.__qualname__, _fingerprint(attrs, depth + 1)]
    if hasattr(value, "__dict__") and kind.__module__ == "__main__":
        return ["object", kind.__qualname__, _fingerprint(vars(value), depth + 1),
                _fingerprint(type(value), depth + 1)]
    return [kind.__name__, repr(value)]
