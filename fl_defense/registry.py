"""One registry per concept: a name -> entry mapping that the rest of the code derives from.

Every concept that a user can choose by name (a defense, a model, a data set, an attack
objective, a strategy) has one :class:`Registry`; its entries carry everything the rest of
the code asks about them (help text, validation, defaults), so that help texts, choices,
config checks, sweep and grid lists and reports are read off the registry instead of being
kept by hand.

Plug-ins
--------
A registry built with ``entry_point_group`` also takes the entries that installed
distributions declare under that group of Python entry points (``importlib.metadata``),
e.g. in a plug-in's ``pyproject.toml``::

    [project.entry-points."fl_defense.defenses"]
    sign = "my_plugin:SIGN"

The object an entry point names must be an entry of the registry's type (or a list or
tuple of them).  Plug-ins are loaded once, on the registry's first look-up; a plug-in that
fails to load, names a wrong type or reuses a built-in name raises
:class:`RegistryError` naming the entry point, so a broken plug-in never goes unnoticed.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from typing import Callable, Generic, Iterator, TypeVar

from fl_defense.errors import suggest

__all__ = ["Registry", "RegistryError"]

T = TypeVar("T")


class RegistryError(ValueError):
    """A registry was asked for an unknown name, or a plug-in could not be registered."""


@dataclass(frozen=True)
class _Plugin:
    group: str
    name: str
    value: str


class Registry(Generic[T]):
    """An ordered, read-only-after-loading mapping ``name -> entry`` for one concept.

    Parameters
    ----------
    concept : the concept's name in messages (``"defense"``, ``"model"`` ...).
    kind : the type every entry must be an instance of; its ``name`` attribute is the key.
    entries : the built-in entries, in the order listings show them.
    entry_point_group : the entry-point group plug-ins register under (``None``: none).
    normalise : maps a user's text to a key (default: strip; names stay case-sensitive).
    """

    def __init__(self, concept: str, kind: type, entries=(), *, entry_point_group: str | None = None,
                 normalise: Callable[[str], str] = str.strip) -> None:
        self.concept = concept
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._normalise = normalise
        self._entries: dict[str, T] = {}
        self._plugins_loaded = entry_point_group is None
        for entry in entries:
            self._add(entry, origin="built-in")

    # ------------------------------------------------------------------ building
    def _add(self, entry: T, origin: str) -> None:
        if not isinstance(entry, self.kind):
            raise RegistryError(f"{origin}: a {self.concept} entry must be a {self.kind.__name__}, "
                                f"got {type(entry).__name__}")
        name = getattr(entry, "name", None)
        if not isinstance(name, str) or not name or name != self._normalise(name):
            raise RegistryError(f"{origin}: a {self.concept} needs a non-empty name in its normal form, got {name!r}")
        if name in self._entries:
            raise RegistryError(f"{origin}: {self.concept} {name!r} is already registered")
        self._entries[name] = entry

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        for ep in sorted(metadata.entry_points(group=self.entry_point_group), key=lambda e: e.name):
            origin = f"plug-in entry point {ep.name!r} = {ep.value!r} (group {self.entry_point_group!r})"
            try:
                obj = ep.load()
            except Exception as exc:  # a broken plug-in is named, never skipped
                raise RegistryError(f"{origin} failed to load: {exc!r}") from exc
            for entry in obj if isinstance(obj, (list, tuple)) else (obj,):
                self._add(entry, origin)

    # ------------------------------------------------------------------ reading
    def get(self, name: object) -> T:
        """The entry called ``name``; :class:`RegistryError` with the nearest name otherwise."""
        self._load_plugins()
        if not isinstance(name, str):
            raise RegistryError(f"{self.concept} name must be a string, got {name!r}")
        key = self._normalise(name)
        if key not in self._entries:
            raise RegistryError(f"unknown {self.concept} {name!r}{suggest(key, self._entries, cutoff=0.6)}; "
                                f"available: {', '.join(self._entries)}")
        return self._entries[key]

    def names(self) -> tuple[str, ...]:
        """Every registered name, built-ins first, in registration order."""
        self._load_plugins()
        return tuple(self._entries)

    def entries(self) -> tuple[T, ...]:
        self._load_plugins()
        return tuple(self._entries.values())

    def select(self, predicate: Callable[[T], bool]) -> tuple[str, ...]:
        """The names of the entries for which ``predicate(entry)`` holds, in order."""
        return tuple(e.name for e in self.entries() if predicate(e))

    def __contains__(self, name: object) -> bool:
        self._load_plugins()
        return isinstance(name, str) and self._normalise(name) in self._entries

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def keys(self) -> tuple[str, ...]:
        return self.names()

    def items(self) -> tuple[tuple[str, T], ...]:
        self._load_plugins()
        return tuple(self._entries.items())

    def values(self) -> tuple[T, ...]:
        return self.entries()

    def choices_text(self, sep: str = " | ") -> str:
        """The names joined for a help text: ``"a | b | c"``."""
        return sep.join(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.concept!r}, {list(self._entries)})"
