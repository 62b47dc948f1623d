"""Which variables a save must look at again, and how they group: pure functions over plain data.

A *group* is a set of names whose values reach a common live object or memory block (their
co-variables); it is pickled as one unit, so a change made through one name is seen in all
of them and identity between them (``a = b = []``) survives a restore. A save looks again
only at the groups holding a name the cell touched, rebound, created or deleted, the groups
holding state pickling cannot watch (opaque), and the groups reaching an attribute of a
module the cell used; every other group is, by construction, exactly as it was saved.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable


@dataclass(frozen=True)
class SavedGroup:
    """What the last save learnt of one group."""

    names: frozenset[str]
    reaches: frozenset[int]
    opaque: bool = False


def names_to_revisit(current: dict[str, int], saved_ids: dict[str, int], groups: Iterable[SavedGroup],
                     touched: set[str], everything: bool, module_reach: frozenset[int] = frozenset()) -> set[str]:
    """The names (of ``current``, name -> object id) whose values must be captured anew."""
    if everything:
        return set(current)
    suspects = {name for name in touched if name in current or name in saved_ids}
    suspects |= {name for name, ident in current.items() if saved_ids.get(name) != ident}
    suspects |= saved_ids.keys() - current.keys()
    revisit: set[str] = set()
    for group in groups:
        if group.opaque or group.names & suspects or group.reaches & module_reach:
            revisit |= group.names
    revisit |= suspects
    return {name for name in revisit if name in current}


def group_by_sharing(reaches: dict[str, frozenset[int]], others: Iterable[SavedGroup]) -> list[set[str]]:
    """Connected components of the captured names (``reaches``: name -> ids it reaches), with
    any untouched saved group that now shares an object with one of them pulled in whole."""
    parent: dict[str, str] = {name: name for name in reaches}

    def find(name: str) -> str:
        while parent[name] != name:
            parent[name] = parent[parent[name]]
            name = parent[name]
        return name

    def union(a: str, b: str) -> None:
        parent[find(a)] = find(b)

    owner: dict[int, str] = {}
    for name, ids in reaches.items():
        for ident in ids:
            if ident in owner:
                union(name, owner[ident])
            else:
                owner[ident] = name
    for group in others:
        linked = {owner[ident] for ident in group.reaches if ident in owner}
        if linked:
            members = sorted(group.names)
            for member in members:
                parent.setdefault(member, member)
                union(member, next(iter(linked)))
    components: dict[str, set[str]] = {}
    for name in parent:
        components.setdefault(find(name), set()).add(name)
    return list(components.values())
