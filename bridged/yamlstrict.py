"""YAML read strictly: a key written twice in a mapping is reported (YAML itself keeps the last one
silently), and a file that does not parse says where and why, in the parser's own words."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import yaml


class Mapping(dict[Any, Any]):
    """A YAML mapping that remembers the keys written twice: ``(key, first line, second line)``."""

    duplicates: tuple[tuple[str, int, int], ...] = ()


class StrictLoader(yaml.SafeLoader):
    """SafeLoader whose mappings report duplicate keys (bridged.configsection.Section turns them into
    errors)."""

    def construct_strict_map(self, node: yaml.MappingNode) -> Iterable[Mapping]:
        data = Mapping()
        yield data
        seen: dict[Any, int] = {}
        duplicates: list[tuple[str, int, int]] = []
        for key_node, _value in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # "<<: *defaults" may be overridden by design
            key = self.construct_object(key_node)
            line = key_node.start_mark.line + 1
            try:
                first = seen.setdefault(key, line)
            except TypeError:
                continue  # an unhashable key: construct_mapping says why
            if first != line:
                duplicates.append((str(key), first, line))
        data.update(self.construct_mapping(node))
        data.duplicates = tuple(duplicates)


StrictLoader.add_constructor("tag:yaml.org,2002:map", StrictLoader.construct_strict_map)


def _where(mark: Any) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}"


def problem(exc: yaml.YAMLError) -> str:
    """The parser's own reason with its place, e.g. ``line 3, column 1: found character '\\t' that
    cannot start any token (while scanning for the next token)``."""
    if not isinstance(exc, yaml.MarkedYAMLError):
        return str(exc)
    parts = []
    if exc.problem_mark is not None:
        parts.append(f"{_where(exc.problem_mark)}: ")
    parts.append(exc.problem or "cannot be parsed")
    if exc.context:
        at = f" at {_where(exc.context_mark)}" if exc.context_mark is not None else ""
        parts.append(f" ({exc.context}{at})")
    return "".join(parts)


def load(text: str) -> Any:
    """The YAML document ``text``, its mappings holding the keys written twice (``Mapping.duplicates``)."""
    return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - a SafeLoader subclass
