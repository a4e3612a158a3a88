"""The per-field rules every config dataclass is checked by, and the parsing of config files.

A dataclass declares its numeric intervals in a ``RANGES`` class variable beside its fields; the valid values of
a string field come from the registry that implements it (:data:`CHOICES`). :func:`validate_fields` applies both,
field by field, to any config dataclass (a tuple field element by element), so bad values stop a job before Ray
starts with a message that names the flag to fix. Checks that relate two fields stay in the class.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import fields
from typing import Any

from mnist_ray.cluster.layout import AUTO
from mnist_ray.data import DATASET_INFO
from mnist_ray.errors import ConfigError
from mnist_ray.training import models, optim

Interval = tuple[float, float, str]
"""(low, high, ends): ``ends`` is two of ``(``/``[`` and ``)``/``]``, open or closed."""

CHOICES: dict[str, tuple[str, ...]] = {
    "model": tuple(models.REGISTRY),
    "dataset": tuple(DATASET_INFO),
    "optimizer": tuple(optim.OPTIMIZERS),
    "schedule": tuple(optim.SCHEDULES),
    "ddp_backend": ("auto", "gloo", "nccl"),
}
"""Valid values of the string fields, taken from the registries that implement them; a tuple field named in the
plural (``optimizers``) takes its singular's."""

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
"""A run name or report id: a plain folder name of at most 100 characters."""


def choices_of(name: str, plural: bool = False) -> tuple[str, ...] | None:
    """The valid values of field ``name`` (of each element, for a tuple field named in the plural)."""
    return CHOICES.get(name.removesuffix("s") if plural else name)


def validate_fields(obj: Any) -> None:
    """Apply the per-field rules (choices, finite numbers, the class's ``RANGES``) to a config dataclass."""
    ranges: dict[str, Interval] = getattr(obj, "RANGES", {})
    for f in fields(obj):
        value = getattr(obj, f.name)
        if value is None or isinstance(value, bool) or value == AUTO:
            continue
        many = isinstance(value, tuple)
        for one in value if many else (value,):
            _check_value(f.name, one, choices_of(f.name, many), ranges.get(f.name))


def _check_value(name: str, value: Any, choices: tuple[str, ...] | None, interval: Interval | None) -> None:
    flag = "--" + name.replace("_", "-")
    if choices and value not in choices:
        raise ConfigError(f"unknown {name} {value!r}; valid: {', '.join(choices)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value}: pass a real value to {flag}")
    if interval is not None:
        check_range(name, value, *interval, flag=flag)


def check_range(name: str, value: float, low: float, high: float, ends: str, flag: str) -> None:
    """Raise a ConfigError naming ``flag`` unless ``value`` lies in the interval."""
    ok_low = value >= low if ends[0] == "[" else value > low
    ok_high = value <= high if ends[1] == "]" else value < high
    if not (ok_low and ok_high):
        interval = f"{ends[0]}{_num(low)}, {_num(high)}{ends[1]}"
        raise ConfigError(f"{name} must be in {interval}, got {_num(value)}: pass {flag} in {interval}")


def _num(x: float) -> str:
    """Whole numbers as integers (4294967295, not 4.29497e+09), others compactly."""
    return str(int(x)) if math.isfinite(x) and float(x).is_integer() else f"{x:g}"


def check_name(kind: str, value: str) -> None:
    """Run names and report ids become folder names: plain, short, no separators or newlines."""
    if not isinstance(value, str) or not NAME.fullmatch(value):
        shown = value if len(str(value)) <= 40 else str(value)[:40] + "..."
        raise ConfigError(
            f"{kind} {shown!r} must be a plain folder name: letters, digits, '.', '_' or '-', "
            "starting with a letter or digit, at most 100 characters"
        )


def checked_fields(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` if every key is a field of ``cls`` and every value has the field's JSON type."""
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"unknown config field(s) {unknown}; valid fields: {sorted(known)}")
    for name, value in values.items():
        _check_type(name, value, type(known[name].default))
    return values


def _check_type(name: str, value: Any, kind: type) -> None:
    """JSON gives ints for floats (fine) but must not give floats, strings or lists for ints."""
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok:
        raise ConfigError(f"config field {name} must be {kind.__name__}, got {value!r}")


def read_config_file(path: str) -> dict[str, Any]:
    """Read a JSON object of TrainConfig fields from a local path or URI; any damage is one ConfigError."""
    from mnist_ray.files import storage

    if not storage.is_file(path):
        raise ConfigError(f"config file {path} does not exist (or is not a file): pass a JSON file")
    try:
        text = storage.read_text(path)
    except (storage.StorageError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {str(exc).splitlines()[0][:200]}") from None
    return parse_json_object(text, f"config file {path}")


def parse_json_object(text: str, what: str) -> dict[str, Any]:
    """A JSON object from ``text``; NaN/Infinity, deep nesting, null or a non-object are ConfigErrors."""

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not a number JSON allows")

    try:
        values = json.loads(text, parse_constant=refuse)
    except (ValueError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise ConfigError(f"{what} is not valid JSON ({reason})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{what} must hold a JSON object of TrainConfig fields, not {type(values).__name__}")
    return values
