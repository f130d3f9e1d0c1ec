"""One component's configuration tree, with the nucleus's lookup and update rules.

Owns:
- case-insensitive key lookup (nucleus `config/Topics.java` keys children by
  `CaseInsensitiveString`; the first spelling written is kept);
- deployment updates: RESET (JSON pointers) first, then the recipe defaults merged without
  overwriting, then MERGE (nucleus `KernelConfigResolver.java`); lists are leaves, replaced whole;
- IPC `UpdateConfiguration`: merge a map into the node at a key path;
- the list of leaves an update changed, which is what `SubscribeToConfigurationUpdate` reports
  (one event per changed, added or removed leaf; none for interior nodes).

Not thread-safe: `server.FakeNucleus` calls it under its own lock. No I/O.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

__all__ = ["ConfigStore", "KeyPath", "parse_json_pointer"]

KeyPath = tuple[str, ...]


def _find_key(node: Mapping[str, Any], name: str) -> str | None:
    wanted = name.lower()
    for key in node:
        if key.lower() == wanted:
            return key
    return None


def _merge(target: dict[str, Any], source: Mapping[str, Any]) -> None:
    """MERGE: maps merge key by key, anything else (lists included) replaces."""
    for name, value in source.items():
        found = _find_key(target, name)
        key = name if found is None else found
        if isinstance(value, Mapping):
            if not isinstance(target.get(key), dict):
                target[key] = {}
            _merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


def _merge_defaults(target: dict[str, Any], defaults: Mapping[str, Any]) -> None:
    """Defaults are merged with timestamp 1 by the nucleus, so they only fill gaps."""
    for name, value in defaults.items():
        key = _find_key(target, name)
        if key is None:
            _merge(target, {name: value})
        elif isinstance(value, Mapping) and isinstance(target[key], dict):
            _merge_defaults(target[key], value)


def _leaves(node: Mapping[str, Any], prefix: KeyPath = ()) -> Iterator[tuple[KeyPath, Any]]:
    for key, value in node.items():
        path = (*prefix, key)
        if isinstance(value, Mapping):
            yield from _leaves(value, path)
        else:
            yield path, value


def _canonical_json(value: Any) -> str:
    # Strict equality: "5" != 5 != 5.0 and True != 1, as the nucleus compares typed values.
    return json.dumps(value, sort_keys=True)


def parse_json_pointer(pointer: str) -> KeyPath:
    """RFC 6901 pointer → key path; `""` is the whole document.

    Raises:
        ValueError: the pointer is neither empty nor starts with `/`.
    """
    if pointer == "":
        return ()
    if not pointer.startswith("/"):
        msg = f"RESET path {pointer!r} must be a JSON pointer starting with '/' (or '' for all)"
        raise ValueError(msg)
    return tuple(token.replace("~1", "/").replace("~0", "~") for token in pointer[1:].split("/"))


class ConfigStore:
    """A component's `configuration` namespace plus its recipe `DefaultConfiguration`."""

    def __init__(
        self, configuration: Mapping[str, Any], defaults: Mapping[str, Any] | None = None
    ) -> None:
        self._root: dict[str, Any] = {}
        _merge(self._root, configuration)
        self._defaults: dict[str, Any] = {}
        _merge(self._defaults, configuration if defaults is None else defaults)

    def snapshot(self) -> dict[str, Any]:
        """A deep copy of the whole configuration."""
        return copy.deepcopy(self._root)

    def find(self, key_path: Sequence[str]) -> tuple[KeyPath, Any] | None:
        """(canonical key path, deep-copied value) of a node, or None if it does not exist."""
        node: Any = self._root
        canonical: list[str] = []
        for name in key_path:
            if not isinstance(node, dict):
                return None
            key = _find_key(node, name)
            if key is None:
                return None
            canonical.append(key)
            node = node[key]
        return tuple(canonical), copy.deepcopy(node)

    def canonical_prefix(self, key_path: Sequence[str]) -> KeyPath:
        """`key_path` with each existing level spelled as stored (for event paths)."""
        found = self.find(key_path)
        return found[0] if found is not None else tuple(key_path)

    def update(self, merge: Mapping[str, Any], reset: Sequence[str] = ()) -> list[KeyPath]:
        """Apply a deployment's configuration update; return the changed leaf paths.

        Raises:
            ValueError: a RESET pointer is malformed or points into a list.
        """
        candidate = copy.deepcopy(self._root)
        for pointer in reset:
            path = parse_json_pointer(pointer)
            if not path:
                candidate = {}
                continue
            self._remove(candidate, path, pointer)
        _merge_defaults(candidate, self._defaults)
        _merge(candidate, merge)
        return self._replace(candidate)

    def merge_at(self, key_path: Sequence[str], value: Mapping[str, Any]) -> list[KeyPath]:
        """IPC UpdateConfiguration: merge `value` into the node at `key_path` (created, or
        turned from a leaf into a map, if needed); return the changed leaf paths."""
        candidate = copy.deepcopy(self._root)
        node = candidate
        for name in key_path:
            found = _find_key(node, name)
            key = name if found is None else found
            if not isinstance(node.get(key), dict):
                node[key] = {}
            node = node[key]
        _merge(node, value)
        return self._replace(candidate)

    @staticmethod
    def _remove(root: dict[str, Any], path: KeyPath, pointer: str) -> None:
        node: Any = root
        for depth, name in enumerate(path):
            if isinstance(node, list):
                msg = f"RESET path {pointer!r}: a list element can't be reset"
                raise ValueError(msg)
            if not isinstance(node, dict):
                return
            key = _find_key(node, name)
            if key is None:
                return
            if depth == len(path) - 1:
                del node[key]
                return
            node = node[key]

    def _replace(self, candidate: dict[str, Any]) -> list[KeyPath]:
        before = {tuple(k.lower() for k in p): (p, v) for p, v in _leaves(self._root)}
        after = {tuple(k.lower() for k in p): (p, v) for p, v in _leaves(candidate)}
        changed = [
            path
            for folded, (path, value) in after.items()
            if folded not in before or _canonical_json(before[folded][1]) != _canonical_json(value)
        ]
        changed += [path for folded, (path, _) in before.items() if folded not in after]
        self._root = candidate
        return changed
