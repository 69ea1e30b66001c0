"""One registry for every kind of plug-in (models, tasks, image readers, dataset layouts), with timm's habit of
``register_model``/``create_model``: entries by name, in the order they were registered, which is the order a
registry that tries them (readers, layouts) asks them in."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Generic, TypeVar

from .options import look_up_option

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries, in order. A name registered again replaces its entry in its place, with a warning, so a
    notebook cell that registers one can run again (``first``: put ahead of the others instead, for an entry that
    must be tried before one it looks like). ``log``: the registering module's logger, whose name the warning
    carries."""

    def __init__(self, kind: str, log: logging.Logger) -> None:
        self.kind, self._log = kind, log
        self._entries: dict[str, T] = {}
        self._origins: dict[str, str] = {}

    def add(self, name: str, entry: T, first: bool = False, origin: str = "") -> T:
        """Register ``entry`` as ``name``; ``origin``: the module that defines it, which the warning names when an
        entry of another module's is replaced (a plugin's model called as a built-in one, whose bundles it then
        builds)."""
        if name in self._entries:
            before = self._origins.get(name, "")
            if before and origin and before != origin:
                self._log.warning("%s %r of %s is replaced by %s's: whatever names %r (a bundle made before included) "
                                  "gets this one; give yours a name of its own unless that is meant",
                                  self.kind, name, before, origin, name)
            else:
                self._log.warning("%s %r was already registered: this registration replaces it", self.kind, name)
        if first:
            self._entries = {name: entry, **{k: v for k, v in self._entries.items() if k != name}}
        else:
            self._entries[name] = entry
        self._origins[name] = origin
        return entry

    def origin(self, name: str) -> str:
        """The module that defines the entry of ``name`` ("" when not said)."""
        return self._origins.get(name, "")

    def plugins(self) -> dict[str, str]:
        """The entries a module outside pneumoscan registered, by name -> that module: what a bundle made with them
        records, so that a process without them is told which module to import. An entry of a script run as
        ``__main__`` (no module another process can import by that name) or of no said origin is left out."""
        return {name: origin for name, origin in self._origins.items()
                if origin and origin != "__main__" and origin.partition(".")[0] != "pneumoscan"}

    def remove(self, name: str) -> None:
        """Take ``name`` out (a test's toy entry); nothing when it is not there."""
        self._entries.pop(name, None)
        self._origins.pop(name, None)

    def get(self, name: str, hint: str | None = None) -> T:
        """The entry of ``name``; ValueError naming the closest registered names (and ``hint``) otherwise."""
        return self._entries[look_up_option(name, self._entries, self.kind, hint=hint)]

    def copy(self) -> Registry[T]:
        """A registry of the same entries (a test registers into a copy and puts the original back)."""
        other: Registry[T] = Registry(self.kind, self._log)
        other._entries, other._origins = dict(self._entries), dict(self._origins)
        return other

    def entries(self) -> dict[str, T]:
        """The entries by name, in order (a copy)."""
        return dict(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._entries))
