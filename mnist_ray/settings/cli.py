"""Command lines derived from the config dataclasses, and the one place user errors become an exit code.

A flag is a dataclass field: ``--field-name``, its type from the annotation, its help from the
docstring under the field, its shown default from the job's own defaults, its choices from the
registries (``config.CHOICES``). Adding a field to a config class adds the flag; nothing here
lists fields by hand. Argparse is enough for this (no new dependency): the derivation is ~60 lines.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import logging
import os
import signal
import sys
import textwrap
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any

from mnist_ray.cluster import layout, stop
from mnist_ray.errors import EXIT_USAGE, MnistRayError
from mnist_ray.settings.config import (
    PRESETS,
    RayOptions,
    RunOptions,
    TrainConfig,
    load_config,
    load_with_request,
)
from mnist_ray.settings.rules import choices_of

STOPPED_EXIT_S = 2.0
"""After a stop signal the process is gone within this many seconds, even if Ray's shutdown hangs."""


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``error: <problem>`` on stderr and exit code 2."""

    def error(self, message: str) -> typing.NoReturn:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"error: {message} (see --help)\n")


def parser(doc: str) -> Parser:
    """A parser whose description is the job module's docstring."""
    first, _, rest = doc.strip().partition("\n")
    return Parser(description=first, epilog=rest.strip() or None, formatter_class=argparse.RawDescriptionHelpFormatter)


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of dataclass ``cls`` (and its bases), by field name."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__[:-1]):
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, after in zip(body, body[1:], strict=False):
            named = isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
            if named and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant):
                docs[node.target.id] = " ".join(str(after.value.value).split())
    return docs


def _kind(annotation: Any) -> tuple[type, str | int | None]:
    """(element type, nargs) of a field annotation: ``int``, ``str | None``, ``tuple[float, ...]``..."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return _kind(args[0])
    if typing.get_origin(annotation) is tuple:
        return args[0], "+" if Ellipsis in typing.get_args(annotation) else len(args)
    return annotation, None


def _shown(value: Any) -> str:
    if isinstance(value, tuple):
        return " ".join(map(str, value)) if value else "none"
    return str(value)


def add_fields(
    group: argparse._ActionsContainer,
    cls: type,
    shown: Any,
    *,
    keep_unset: bool = False,
    skip: Iterable[str] = (),
    help_overrides: dict[str, str] | None = None,
    auto: Iterable[str] = (),
) -> None:
    """Add one flag per field of dataclass ``cls``; ``shown`` (an instance) supplies the defaults.

    With ``keep_unset`` every flag defaults to None, so the caller can tell flags given from flags
    left out (TrainConfig flags override a preset and a --config file only when given). Fields named in
    ``auto``, and fields whose default is ``"auto"``, also take the value ``auto`` (:mod:`mnist_ray.cluster.layout`).
    """
    hints = typing.get_type_hints(cls)
    docs = {**field_docs(cls), **(help_overrides or {})}
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        kind, nargs = _kind(hints[f.name])
        default = layout.AUTO if f.name in auto else getattr(shown, f.name)
        text = docs.get(f.name, "")
        if default is not None and default != ():
            text += f" (default: {_shown(default)})"
        kwargs: dict[str, Any] = {"help": text.replace("%", "%%"), "default": None if keep_unset else default}
        if default == layout.AUTO:
            _add_auto(group, "--" + f.name.replace("_", "-"), kind, kwargs)
            continue
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = kind
            if nargs is not None:
                kwargs.update(nargs=nargs, metavar=f.name.upper().split("_")[-1])
            if nargs == "+":  # repeatable: --run A --run B (or --run A B); unset, build keeps the field's default
                kwargs.update(action="extend", default=None)
            choices = choices_of(f.name, plural=nargs is not None)
            if choices:  # a tuple field named in the plural (optimizers) takes the singular's choices
                kwargs.update(choices=choices, metavar=None)
        group.add_argument("--" + f.name.replace("_", "-"), **kwargs)


def _add_auto(group: argparse._ActionsContainer, flag: str, kind: type, kwargs: dict[str, Any]) -> None:
    """A flag that takes ``auto`` or a value: ``--num-workers auto|N``; a switch: ``--use-gpu [auto|yes|no]``, whose
    bare form means yes, and ``--no-use-gpu``."""
    if kind is bool:
        group.add_argument(flag, nargs="?", const=True, type=_auto_or_bool, metavar="auto|yes|no", **kwargs)
        dest, no = flag[2:].replace("-", "_"), "--no-" + flag[2:]
        group.add_argument(no, dest=dest, action="store_const", const=False, help=f"same as {flag} no")
    else:
        group.add_argument(flag, type=_auto_or(kind), metavar="auto|N", **kwargs)


def _auto_or_bool(text: str) -> bool | str:
    """``auto``, or a yes/no answer as a bool."""
    answers = {"auto": layout.AUTO, "yes": True, "true": True, "1": True, "no": False, "false": False, "0": False}
    if text.lower() not in answers:
        raise argparse.ArgumentTypeError(f"expected auto, yes or no, got {text!r}")
    return answers[text.lower()]


def _auto_or(kind: type) -> Callable[[str], Any]:
    """A parser of ``auto`` or a ``kind`` value, whose name argparse shows in its error."""

    def parse(text: str) -> Any:
        if text == layout.AUTO:
            return layout.AUTO
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected auto or {kind.__name__}, got {text!r}") from None

    return parse


def build(cls: type, args: argparse.Namespace, **fixed: Any) -> Any:
    """An instance of ``cls`` from the parsed flags of its fields (plus ``fixed`` values); unset flags keep defaults."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if getattr(args, f.name, None) is not None}
    values.update(fixed)
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def add_config_flags(p: argparse.ArgumentParser, base: dict[str, Any] | None = None) -> None:
    """--preset, --config and one flag per TrainConfig field, showing this job's real defaults."""
    g = p.add_argument_group("training config (preset, then --config, then these flags)")
    g.add_argument(
        "--preset", default="default", choices=list(PRESETS), help="named recipe to start from (default: default)"
    )
    g.add_argument(
        "--config", metavar="FILE.json", help="JSON file or URI of TrainConfig fields (e.g. a sweep's best config)"
    )
    add_fields(g, TrainConfig, load_config(base=base), keep_unset=True, auto=layout.FIELDS)


def config_from_args(
    args: argparse.Namespace, base: dict[str, Any] | None = None
) -> tuple[TrainConfig, layout.Request]:
    """Preset, then --config file, then the flags given (``base``: this job's own defaults, below all), and the
    layout fields left to the cluster (``auto``)."""
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
    return load_with_request(args.preset, args.config, overrides, base)


def add_run_flags(p: argparse.ArgumentParser, defaults: RunOptions, **kw: Any) -> None:
    """Flags for RunOptions (names, folders, fault tolerance) and RayOptions."""
    add_fields(p.add_argument_group("run"), RunOptions, defaults, **kw)
    add_fields(p.add_argument_group("ray"), RayOptions, RayOptions())


def run(job: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Run a job's ``main``: user errors print one ``error:`` line and give 2 (1 for a full disk); a stop signal
    prints one ``stopped by SIG...`` line saying what happens next and gives 128 + signal (Ctrl-C: 130)."""
    try:
        with stop.next_step("re-run the same command to resume from the last checkpoint"):
            return job(argv) or 0
    except SystemExit as exc:  # argparse: --help (0) or a bad flag (2, its one line already printed)
        return exc.code if isinstance(exc.code, int) else 1
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt) or stop.received() is not None:  # Ctrl-C, SIGTERM, SIGHUP
            return _stopped(exc)
        if isinstance(exc, MnistRayError):
            print("error: " + " ".join(str(exc).split()), file=sys.stderr, flush=True)  # always one line
            return getattr(exc, "exit_code", EXIT_USAGE)
        raise


def _stopped(exc: BaseException) -> int:
    """Print the one ``stopped by SIG...; <what next>`` line; the exit code a shell reports (128 + signal)."""
    # Ray Data re-raises an interrupt as a plain KeyboardInterrupt: the signal received is what counts.
    stopped = exc if isinstance(exc, stop.Stopped) else stop.Stopped(stop.received() or signal.SIGINT)
    print(f"stopped by {stopped.name}; {stop.explain(exc)}", file=sys.stderr, flush=True)
    return stopped.exit_code


def main(job: Callable[[list[str] | None], int]) -> typing.NoReturn:
    """Entry point of ``jobs/*.py``: log to stdout, run ``job`` on ``sys.argv``, exit with its code.

    Stop signals are handled from here on (:mod:`mnist_ray.cluster.stop`). After one, the exit is bounded: Ray's own
    shutdown runs, but a job server SIGKILLs a driver that is not gone within its stop grace (3 s by default).
    """
    stop.install()
    logging.basicConfig(level=os.environ.get("MNIST_RAY_LOG", "INFO"), format="%(message)s", stream=sys.stdout)
    code = run(job)
    if stop.received() is not None:
        stop.exit_within(STOPPED_EXIT_S, code)
    sys.exit(code)
