"""Typed, error-collecting access to the YAML of the config file (bridged.configfile's loaders read every
key through :class:`Section`): a bad value is recorded with its dotted key and a stand-in returned, so
that one run reports every problem of the file; an unknown key is reported with the known key it most
resembles."""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, cast

from .config import PLACEHOLDERS, ConfigError


class Problems:
    """Every problem found in one file, the first one per key (a bad value is reported once, not again
    by each check that reads its stand-in)."""

    def __init__(self) -> None:
        self.items: dict[str, str] = {}

    def add(self, key: str, message: str) -> None:
        self.items.setdefault(key, message)

    def extend(self, error: ConfigError) -> None:
        for key, message in error.problems:
            self.add(key, message)

    def error(self) -> ConfigError:
        (key, message), *more = self.items.items()
        return ConfigError(key, message, *more)

    def check(self) -> None:
        if self.items:
            raise self.error()


T = TypeVar("T")


def as_text_problem(value: Any) -> str:
    # YAML turns unquoted 79161234567 into an int and yes/no into booleans: say so, an admin sees
    # the value they typed and would not guess why it is "not a string".
    if isinstance(value, bool):
        return "must be a string; YAML read a yes/no/true/false word as a boolean: quote it"
    if isinstance(value, int | float):
        return f"must be a string; YAML read {value!r} as a number: quote it"
    return "must be a string"


class Section:
    """Typed access to one mapping of the YAML, remembering its dotted path for errors.

    A getter that meets a bad value records the problem and returns a stand-in (the default, or an
    empty value) so that loading goes on and every problem of the file is reported; the caller's
    :class:`Problems` raises them all at the end.
    """

    def __init__(self, data: Any, path: str, problems: Problems) -> None:
        self.problems = problems
        self.path = path
        self.used: set[str] = set()
        # A section that is missing or not a mapping reported that already: its keys stay quiet.
        self.broken = False
        if not isinstance(data, Mapping):
            problems.add(path or "<root>", "must be a mapping")
            data, self.broken = {}, True
        self.data: Mapping[Any, Any] = data
        for name, first, second in getattr(data, "duplicates", ()):
            self.error(name, f"is set twice (lines {first} and {second}); YAML would keep the last: keep one")

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def error(self, name: str, message: str) -> None:
        """Record a problem with this section's key ``name``; loading goes on."""
        self.problems.add(self.key(name), message)

    def child(self, data: Any, path: str) -> Section:
        """A mapping inside this one (a list item), reporting into the same problems."""
        return Section(data, path, self.problems)

    def _get(self, name: str, required: bool) -> Any:
        self.used.add(name)
        if name not in self.data or self.data[name] is None:
            if required and not self.broken:
                self.error(name, "is required")
            return None
        return self.data[name]

    def text(self, name: str, default: str | None = None, *, required: bool = False) -> str:
        value = self._get(name, required and default is None)
        stand_in = "" if default is None else default
        if value is None:
            return stand_in
        if not isinstance(value, str):
            self.error(name, as_text_problem(value))
            return stand_in
        if not value.strip():
            self.error(name, "must be a non-empty string")
            return stand_in
        return value

    def opt_str(self, name: str) -> str | None:
        value = self._get(name, False)
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            self.error(name, as_text_problem(value))
            return None
        return value

    def secret(self, name: str) -> str:
        value = self.text(name, required=True)
        if value in PLACEHOLDERS:
            self.error(name, "still holds the example placeholder; set a real value")
        return value

    def number(self, name: str, default: float, *, minimum: float, maximum: float) -> float:
        value = self._get(name, False)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.error(name, "must be a number")
            return default
        if not minimum <= value <= maximum:
            self.error(name, f"must be between {minimum} and {maximum}")
            return default
        return float(value)

    def integer(self, name: str, default: int, *, minimum: int, maximum: int) -> int:
        value = self._get(name, False)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            self.error(name, "must be an integer")
            return default
        if not minimum <= value <= maximum:
            self.error(name, f"must be between {minimum} and {maximum}")
            return default
        return value

    def boolean(self, name: str, default: bool) -> bool:
        value = self._get(name, False)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.error(name, "must be true or false")
            return default
        return value

    def items(self, name: str, *, required: bool = False, what: str = "a list") -> list[Any]:
        """A list value (empty when absent or bad)."""
        value = self._get(name, required)
        if value is None:
            return []
        if not isinstance(value, list):
            self.error(name, f"must be {what}")
            return []
        return value

    def section(self, name: str, *, required: bool = True) -> Section:
        value = self._get(name, required)
        section = self.child({} if value is None else value, self.key(name))
        section.broken = section.broken or value is None
        return section

    def load(self, name: str, loader: Callable[[Section], T], *, required: bool = True) -> T:
        """``loader(self.section(name))``; a ConfigError it raises is recorded with the others."""
        try:
            return loader(self.section(name, required=required))
        except ConfigError as exc:
            self.problems.extend(exc)
            # Never used: parse_config raises with every problem before building anything from it.
            return cast(T, None)

    def finish(self) -> None:
        """Report every key nobody asked for, with the known key it most resembles."""
        known = sorted(self.used)
        for name in sorted(set(map(str, self.data)) - self.used):
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            self.error(name, f"is not a known key{hint}")


# -- value shapes more than one section checks ---------------------------------------------------

SOUND_RE = re.compile(r"/?[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)*")
SOUND_PROBLEM = (
    "must be Asterisk sound names (letters, digits, '_', '-', '.', '/'; no extension) joined by '&'"
)


def sound(s: Section, name: str, value: str | None) -> None:
    """Report ``value`` (a prompt as the config writes it) if it is not sound names joined by '&'."""
    if value is not None and not all(
        SOUND_RE.fullmatch(part) and ".." not in part.split("/") for part in value.split("&")
    ):
        s.error(name, SOUND_PROBLEM)
