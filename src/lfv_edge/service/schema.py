"""Declaring configuration keys once: a dataclass field carries its key, converter, flag and doc.

Each configuration section is a frozen dataclass whose fields are declared with `key(...)`:

    @dataclass(frozen=True, slots=True)
    class QueueConfig:
        size: int = key("size", to_int(1, 100_000), default=8, flag="--queue-size",
                        doc="requests waiting for the model")

A list of sections of several kinds, told apart by a `type` key (the capture sources), is
declared with `to_variant_list({"folder": FolderSourceConfig, "camera": CameraSourceConfig})`:
each entry is parsed as the section its `type` names, with key paths such as `sources[1].url`,
and the README table lists its keys as `sources[].url (camera)`.

From that one declaration come the parser (`parse_section`: unknown keys refused, `None`/""
meaning "not given", errors carrying the key path), the command-line flags of `serve`
(`add_flags`, `raw_from_flags`), the README's configuration table (`reference_rows`) and the
checks of the recipe's DefaultConfiguration (tests parse it through the same function).

Why dataclass metadata rather than pydantic or msgspec: the converters below were hardened by
fuzzing and give the messages users and tests rely on ("queue.size: expected an integer
between 1 and 100000, got 'eight'"); both libraries would need the same custom validators to
keep them, and their own coercion rules differ from what Greengrass sends (numbers and
booleans as strings). The flags, the README table and the recipe checks need a walk over the
declarations either way, and the device's virtual environment stays free of a compiled
validation core. Cross-field rules live in a section's `validate_section(where)` method.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar, cast

from lfv_edge.errors import ConfigError
from lfv_edge.inspection.postprocess import is_hex_color

T = TypeVar("T")
Convert = Callable[[object, str], T]  # (raw value, key path) → typed value; raises ConfigError
_MISSING: Any = dataclasses.MISSING


@dataclass(frozen=True, slots=True)
class Key:
    """One configuration key: its name, how it is checked, documented and given on the command line."""

    name: str  # camelCase, as in JSON files and the Greengrass recipe
    convert: Convert[Any]
    doc: str
    required: bool = False
    default_doc: str | None = None  # how the default reads in docs ("16 MiB"); else repr-ish
    thing_name: bool = False  # "{thingName}" becomes $AWS_IOT_THING_NAME before converting
    flag: str | None = None  # `serve` flag standing for this key
    flag_const: object = None  # a flag without a value that sets this value (e.g. --no-mask)
    flag_append: bool = False  # repeatable flag collecting a list
    metavar: str | None = None
    choices: tuple[str, ...] | None = None  # for --help
    section: type | None = None  # a nested section's class (for walking the schema)
    variants: Variants | None = None  # a list of sections told apart by a discriminator key


@dataclass(frozen=True, slots=True)
class Variants:
    """The sections a list may hold, by the value of each entry's discriminator key."""

    sections: Mapping[str, type]  # e.g. {"folder": FolderSourceConfig, "camera": ...}
    discriminator: str = "type"
    # The `id` an entry built from command-line flags gets, per kind (flags describe one entry).
    flag_ids: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def kind_of(self, section: object) -> str:
        """The discriminator value of a parsed entry."""
        for name, cls in self.sections.items():
            if isinstance(section, cls):
                return name
        msg = f"{type(section).__name__} is not one of {sorted(self.sections)}"
        raise TypeError(msg)


def key(
    name: str,
    convert: Convert[Any],
    *,
    doc: str,
    default: object = _MISSING,
    default_factory: Callable[[], object] | None = None,
    required: bool = False,
    default_doc: str | None = None,
    thing_name: bool = False,
    flag: str | None = None,
    flag_const: object = None,
    flag_append: bool = False,
    metavar: str | None = None,
    choices: tuple[str, ...] | None = None,
) -> Any:  # noqa: ANN401 - a dataclass field stands for any field type
    """A dataclass field declaring one configuration key (see the module docstring)."""
    metadata = {
        "key": Key(
            name, convert, doc, required, default_doc, thing_name, flag, flag_const,
            flag_append, metavar, choices, getattr(convert, "section", None),
            getattr(convert, "variants", None),
        )
    }  # fmt: skip
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def keys_of(section: type) -> list[tuple[dataclasses.Field[Any], Key]]:
    """The declared keys of a section class, in declaration order."""
    return [(f, f.metadata["key"]) for f in dataclasses.fields(section) if "key" in f.metadata]


class _Validated(Protocol):
    def validate_section(self, where: str) -> None: ...


def join(where: str, name: str) -> str:
    """The key path of `name` inside the section at `where`."""
    return f"{where}.{name}" if where else name


def parse_section(
    section: type[T], raw: object, where: str, environ: Mapping[str, str] = os.environ
) -> T:
    """Check and type one section (and the sections inside it).

    Raises:
        ConfigError: names the key path and what was expected.
    """
    mapping = require_mapping(raw, where)
    declared = keys_of(section)
    known = tuple(k.name for _, k in declared)
    for name in mapping:
        if name not in known:
            fail(join(where, name), f"unknown key (known: {', '.join(known)})")
    values: dict[str, object] = {}
    for field, spec in declared:
        path = join(where, spec.name)
        value = mapping.get(spec.name)
        if value is None or value == "":
            if spec.required:
                fail(path, "required")
            continue
        if spec.thing_name:
            value = expand_thing_name(value, path, environ)
        if spec.section is not None:  # nested sections need the environment too
            values[field.name] = parse_section(spec.section, value, path, environ)
        elif spec.variants is not None:
            values[field.name] = parse_variant_list(spec.variants, value, path, environ)
        else:
            values[field.name] = spec.convert(value, path)
    parsed = section(**values)
    validate = getattr(parsed, "validate_section", None)
    if validate is not None:
        validate(where)
    return parsed


def to_section(section: type[T]) -> Convert[T]:
    """The converter of a nested section (`parse_section` with the process environment).

    `key()` marks it, so `parse_section` passes the caller's environment down instead.
    """

    def convert(value: object, where: str) -> T:
        return parse_section(section, value, where)

    convert.section = section  # type: ignore[attr-defined]
    return convert


def parse_variant_list(
    variants: Variants, raw: object, where: str, environ: Mapping[str, str] = os.environ
) -> tuple[Any, ...]:
    """Check and type a list whose entries are sections named by their discriminator key.

    Raises:
        ConfigError: names the entry's key path, e.g. `sources[1].url`.
    """
    if not isinstance(raw, list | tuple):
        fail(where, f"expected a list of objects, got {show(raw)}")
    kinds = ", ".join(sorted(variants.sections))
    entries: list[Any] = []
    for index, item in enumerate(cast(Sequence[object], raw)):
        at = f"{where}[{index}]"
        mapping = require_mapping(item, at)
        kind = mapping.get(variants.discriminator)
        kind_path = join(at, variants.discriminator)
        if kind is None or kind == "":
            fail(kind_path, f"required (one of {kinds})")
        if not isinstance(kind, str) or kind not in variants.sections:
            fail(kind_path, f"expected one of {kinds}, got {show(kind)}")
        body = {name: value for name, value in mapping.items() if name != variants.discriminator}
        entries.append(parse_section(variants.sections[str(kind)], body, at, environ))
    return tuple(entries)


def to_variant_list(
    sections: Mapping[str, type],
    *,
    discriminator: str = "type",
    flag_ids: Mapping[str, str] | None = None,
) -> Convert[tuple[Any, ...]]:
    """The converter of a list of sections told apart by `discriminator` (see the module doc).

    `key()` marks it, so `parse_section` passes the caller's environment down.
    """
    variants = Variants(dict(sections), discriminator, dict(flag_ids or {}))

    def convert(value: object, where: str) -> tuple[Any, ...]:
        return parse_variant_list(variants, value, where)

    convert.variants = variants  # type: ignore[attr-defined]
    return convert


# --- errors ------------------------------------------------------------------------------


def fail(where: str, problem: str) -> Any:  # noqa: ANN401 - never returns
    """Raise the ConfigError of `problem` at key path `where`."""
    raise ConfigError(f"{where or '(top level)'}: {problem}", key=where)


def show(value: object) -> str:
    """A value as an error message quotes it (shortened)."""
    text = repr(value) if not isinstance(value, str) else f"'{value}'"
    return text if len(text) <= 60 else text[:57] + "..."


def require_mapping(raw: object, where: str) -> Mapping[str, object]:
    """`raw` as a mapping, or a ConfigError saying an object was expected."""
    if not isinstance(raw, Mapping):
        fail(where, f"expected an object, got {show(raw)}")
    assert isinstance(raw, Mapping)  # noqa: S101 - fail() raised otherwise
    return raw


def expand_thing_name(value: object, where: str, environ: Mapping[str, str]) -> object:
    """Replace `{thingName}` by $AWS_IOT_THING_NAME in a string value."""
    if not isinstance(value, str) or "{thingName}" not in value:
        return value
    thing = environ.get("AWS_IOT_THING_NAME")
    if not thing:
        fail(where, "uses {thingName} but AWS_IOT_THING_NAME is not set")
    return value.replace("{thingName}", str(thing))


# --- converters (each takes the raw value and its key path) ---------------------------------

# ASCII digits only: str.isdigit() also accepts "²", which int() refuses (found by fuzzing), and
# a bounded length keeps int() under Python's 4,300-digit limit.
_INTEGER_TEXT = re.compile(r"-?[0-9]{1,30}")


def to_int(minimum: int, maximum: int = 1 << 62) -> Convert[int]:
    """An integer in [minimum, maximum]; Greengrass may send it as text or as 8.0."""

    def convert(value: object, where: str) -> int:
        number: int | None = None
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, float) and value.is_integer():
            number = int(value)  # Greengrass may turn "8" into 8.0
        elif isinstance(value, str) and _INTEGER_TEXT.fullmatch(value.strip()):
            number = int(value)
        if number is None or not minimum <= number <= maximum:
            bound = f"between {minimum} and {maximum}" if maximum < 1 << 62 else f"≥ {minimum}"
            fail(where, f"expected an integer {bound}, got {show(value)}")
        assert number is not None  # noqa: S101 - fail() raised otherwise
        return number

    return convert


def to_number(minimum: float = -math.inf, maximum: float = math.inf) -> Convert[float]:
    """A finite number in [minimum, maximum] (also as text)."""

    def convert(value: object, where: str) -> float:
        number: float | None = None
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                number = None
        if number is None or not math.isfinite(number) or not minimum <= number <= maximum:
            bound = f"≥ {minimum}" if maximum == math.inf else f"between {minimum} and {maximum}"
            fail(where, f"expected a number {bound}, got {show(value)}")
        assert number is not None  # noqa: S101 - fail() raised otherwise
        return number

    return convert


def to_bool(value: object, where: str) -> bool:
    """true/false (also as text)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in {"true", "false"}:
        return value.lower() == "true"
    return fail(where, f"expected true or false, got {show(value)}")  # type: ignore[no-any-return]


def to_text(value: object, where: str) -> str:
    """A string."""
    if not isinstance(value, str):
        fail(where, f"expected a string, got {show(value)}")
    assert isinstance(value, str)  # noqa: S101 - fail() raised otherwise
    return value


def to_path(value: object, where: str) -> Path:
    """A path (`~` expanded)."""
    text = to_text(value, where)
    try:
        return Path(text).expanduser()
    except RuntimeError as exc:  # "~someone" for a user that does not exist
        return fail(where, f"cannot expand {show(text)}: {exc}")  # type: ignore[no-any-return]


def to_paths(value: object, where: str) -> tuple[Path, ...]:
    """A list of paths, or one string of paths separated by os.pathsep."""
    if isinstance(value, str):
        return tuple(to_path(part, where) for part in value.split(os.pathsep) if part)
    if not isinstance(value, list):
        fail(where, f"expected a list of folders, got {show(value)}")
    assert isinstance(value, list)  # noqa: S101 - fail() raised otherwise
    return tuple(to_path(item, f"{where}[{i}]") for i, item in enumerate(value))


def to_names(value: object, where: str) -> tuple[str, ...]:
    """A list of strings (one string counts as a list of one)."""
    items = value if isinstance(value, list) else [value]
    return tuple(to_text(item, f"{where}[{i}]") for i, item in enumerate(items))


def to_choice(options: Sequence[str], *, upper: bool = False) -> Convert[str]:
    """One of `options` (compared upper-cased when `upper`)."""

    def convert(value: object, where: str) -> str:
        candidate = str(value).upper() if upper else value
        if candidate not in options:
            fail(where, f"expected one of {', '.join(options)}, got {show(value)}")
        return str(candidate)

    return convert


def topic_problem(topic: str, *, subscribe: bool) -> str | None:
    """Why `topic` cannot be published to (or subscribed to), or None when it can."""
    if not topic or len(topic.encode()) > 65535 or "\0" in topic:
        return "not a valid MQTT topic"
    if not subscribe and ("+" in topic or "#" in topic):
        return "a publish topic cannot contain the wildcards + or #"
    return None


def to_topic(*, subscribe: bool) -> Convert[str]:
    """An MQTT topic; wildcards only where we subscribe."""

    def convert(value: object, where: str) -> str:
        topic = to_text(value, where)
        problem = topic_problem(topic, subscribe=subscribe)
        if problem is not None:
            fail(where, f"{problem}: {show(value)}")
        return topic

    return convert


def to_colors(value: object, where: str) -> Mapping[str, str]:
    """A label → #RRGGBB map (upper-cased)."""
    mapping = require_mapping(value, where)
    colors: dict[str, str] = {}
    for label, color in mapping.items():
        if not is_hex_color(color):
            fail(join(where, label), f"expected a colour like #23A436, got {show(color)}")
        colors[label] = str(color).upper()
    return colors


# --- walking the schema: flags and docs ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyRow:
    """One leaf key with its full path, as the README's table shows it."""

    path: str
    spec: Key
    default: str


def _default_text(field: dataclasses.Field[Any], spec: Key) -> str:
    if spec.default_doc is not None:
        return spec.default_doc
    if spec.required:
        return "required"
    if field.default is not dataclasses.MISSING:
        value = field.default
        if value is None:
            return "none"
        if isinstance(value, enum.Enum):
            return f"`{value.value}`"
        if isinstance(value, bool):
            return str(value).lower()
        if isinstance(value, str | int | float):
            return f"`{value}`" if isinstance(value, str) else f"{value:g}"
    return "none"


def reference_rows(section: type, where: str = "") -> Iterator[KeyRow]:
    """Every leaf key of `section` and its nested sections, depth first, with full paths.

    The keys of a variant list read `sources[].type`, then `sources[].url (camera)`, ….
    """
    for field, spec in keys_of(section):
        path = join(where, spec.name)
        if spec.section is not None:
            yield from reference_rows(spec.section, path)
        elif spec.variants is not None:
            yield from _variant_rows(spec, path)
        else:
            yield KeyRow(path, spec, _default_text(field, spec))


def _variant_rows(spec: Key, path: str) -> Iterator[KeyRow]:
    variants = spec.variants
    assert variants is not None  # noqa: S101 - the caller checked
    kinds = tuple(variants.sections)
    discriminator = Key(
        variants.discriminator, to_choice(kinds), required=True, choices=kinds,
        doc=f"{spec.doc}: the kind of entry, " + " or ".join(f"`{k}`" for k in kinds),
    )  # fmt: skip
    yield KeyRow(f"{path}[].{variants.discriminator}", discriminator, "required")
    for kind, section in variants.sections.items():
        for row in reference_rows(section, f"{path}[]"):
            yield KeyRow(f"{row.path} ({kind})", row.spec, row.default)


def variant_row_parts(path: str) -> tuple[str, str, str] | None:
    """`("sources", "url", "camera")` for the row path `sources[].url (camera)`, else None."""
    match = re.fullmatch(r"(?P<list>[^\[]+)\[\]\.(?P<key>\S+) \((?P<kind>[^)]+)\)", path)
    if match is None:
        return None
    return match["list"], match["key"], match["kind"]


def find_key(section: type, path: str) -> Key:
    """The declaration of the key at `path` (e.g. "queue.size")."""
    for row in reference_rows(section):
        if row.path == path:
            return row.spec
    msg = f"no configuration key {path}"
    raise KeyError(msg)
