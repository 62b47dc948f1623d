"""A module the kernel tests import: state that code in a module changes without any name of
the notebook's namespace being read."""

CACHE: list = []


def remember(value):
    CACHE.append(value)
    return len(CACHE)
