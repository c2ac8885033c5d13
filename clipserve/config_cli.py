"""Command-line flags generated from pydantic model fields: one declaration, one help text per field.

A field's flag is ``--<name with dashes>`` unless the field names another in its
``json_schema_extra={"flag": "--crop-size"}``; its help is the field's ``description`` (from
``Field(description=...)`` or the attribute docstring) plus its default and, for settings models,
its environment variable. ``clipserve start``, ``clipserve plan`` and the trainer build their
parsers with ``add_model_arguments`` and never restate a field.

``shared_field(Model, name)`` declares a field of one model as the same field of another (same
default, constraints and description), e.g. ``ServiceConfig.num_clips`` is ``SamplingConfig.num_clips``.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import types
import typing
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

__all__ = ["add_model_arguments", "field_flag", "format_validation_error", "model_fields", "model_overrides",
           "nearest_field", "shared_field"]


def shared_field(model: type[BaseModel], name: str, *, flag: str | None = None) -> Any:
    """A copy of ``model``'s field ``name`` (default, constraints, description) to declare it again,
    optionally with its own flag name."""
    info = copy.deepcopy(model.model_fields[name])
    if flag is not None:
        extra = dict(info.json_schema_extra) if isinstance(info.json_schema_extra, dict) else {}
        info.json_schema_extra = {**extra, "flag": flag}
    return info


def model_fields(model: Any) -> dict[str, FieldInfo]:
    """The fields of a pydantic model or pydantic dataclass, in declaration order."""
    fields = getattr(model, "model_fields", None)
    if fields is None:
        fields = model.__pydantic_fields__
    return dict(fields)


def field_flag(name: str, info: FieldInfo) -> str:
    """The flag of a field: its ``json_schema_extra['flag']`` or ``--`` + the name with dashes."""
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    return str(extra.get("flag") or "--" + name.replace("_", "-"))


def _tuple_arity(annotation: Any) -> tuple[Any, int] | None:
    """``(element type, length)`` of a fixed-length homogeneous tuple annotation such as
    ``tuple[float, float]`` (one flag taking that many values), else None."""
    if typing.get_origin(annotation) is not tuple:
        return None
    args = typing.get_args(annotation)
    if not args or Ellipsis in args or len(set(args)) != 1 or args[0] not in (int, float):
        return None
    return args[0], len(args)


def _value_type(annotation: Any) -> tuple[Any, tuple[Any, ...] | None]:
    """``(argparse type, choices or None)`` for a field annotation (``X | None`` counts as ``X``)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _value_type(args[0])
        return str, None
    if origin is Literal:
        values = typing.get_args(annotation)
        return type(values[0]), values
    if annotation in (int, float, str, Path):
        return annotation, None
    return str, None


def parse_bool(raw: str, flag: str = "") -> bool:
    """A flag's boolean value: 1/true/yes/on or 0/false/no/off (any case); the error names the flag."""
    low = raw.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{flag} expects a boolean (true/false), got {raw!r}" if flag
                                     else f"expected a boolean (true/false), got {raw!r}")


def _default_text(info: FieldInfo) -> str:
    if info.is_required():
        return "required"
    default = info.get_default(call_default_factory=True)
    return f"default: {'unset' if default is None else (repr(default) if default == '' else default)}"


def add_model_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    model: Any,
    *,
    fields: Iterable[str] | None = None,
    env_prefix: str | None = None,
    use_defaults: bool = False,
    choices: bool = False,
    converter: Callable[[str, Any], Callable[[str], Any]] | None = None,
    bool_values: bool = False,
) -> list[str]:
    """Add one flag per field of ``model`` (all, or ``fields`` in that order); return the field names.

    Args:
        env_prefix: name the environment variable of each field in its help (settings models).
        use_defaults: put the model's defaults into the namespace; False leaves fields that were not
            given out of it (``argparse.SUPPRESS``), so flags override the environment and config
            files only where given (``model_overrides``).
        choices: let argparse reject values outside a ``Literal`` (otherwise pydantic does).
        converter: ``converter(flag, type)`` gives the value parser of a flag (default: the type).
        bool_values: booleans take an optional value (``--resume``, ``--resume false``).

    ``model`` is a pydantic model or pydantic dataclass. Booleans become switches (``--eval-mode``
    sets True) unless their default is True, in which case ``--no-<name>`` sets False.
    """
    all_fields = model_fields(model)
    names = list(fields) if fields is not None else list(all_fields)
    formatter = getattr(parser, "formatter_class", None)
    # argparse's ArgumentDefaultsHelpFormatter prints the defaults it is given itself
    formatter_shows_defaults = use_defaults and isinstance(formatter, type) and issubclass(
        formatter, argparse.ArgumentDefaultsHelpFormatter)
    for name in names:
        info = all_fields[name]
        flag = field_flag(name, info)
        text = (info.description or name.replace("_", " ")).strip().rstrip(".")
        env = f"; env {env_prefix}{name.upper()}" if env_prefix else ""
        shown = [] if formatter_shows_defaults and not info.is_required() else [_default_text(info)]
        shown += [env[2:]] if env else []
        help_text = (f"{text} ({'; '.join(shown)})" if shown else text).replace("%", "%%")
        default = info.get_default(call_default_factory=True) if use_defaults and not info.is_required() else argparse.SUPPRESS
        if info.annotation is bool:
            # Boolean help says what the flag does and what holds without it, never "--no-x (default: True)"
            # (which reads as if the negation were on); the default goes into the namespace through
            # set_defaults so that ArgumentDefaultsHelpFormatter does not append "(default: True)".
            is_on = bool(info.get_default(call_default_factory=True)) if not info.is_required() else False
            if default is not argparse.SUPPRESS:
                parser.set_defaults(**{name: default})
            env_note = f"; env {env_prefix}{name.upper()}=true|false" if env_prefix else ""
            if bool_values:
                switch = f"on by default; {flag} false turns it off" if is_on else f"off by default; {flag} turns it on"
                parse = converter(flag, bool) if converter is not None else parse_bool
                parser.add_argument(flag, dest=name, nargs="?", const=True, type=parse, default=argparse.SUPPRESS,
                                    help=f"{text} ({switch}{env_note})".replace("%", "%%"))
            elif is_on:
                negation = "--no-" + flag[2:]
                parser.add_argument(negation, dest=name, action="store_const", const=False, default=argparse.SUPPRESS,
                                    help=f"turn off: {text} (on unless {negation} is given{env_note})".replace("%", "%%"))
            else:
                parser.add_argument(flag, dest=name, action="store_const", const=True, default=argparse.SUPPRESS,
                                    help=f"{text} (off unless {flag} is given{env_note})".replace("%", "%%"))
            continue
        arity = _tuple_arity(info.annotation)  # one flag, several values: --crop-area 0.6 1.0
        kind, allowed = (arity[0], None) if arity is not None else _value_type(info.annotation)
        kwargs: dict[str, Any] = dict(dest=name, type=converter(flag, kind) if converter else kind, default=default,
                                      help=help_text)
        if arity is not None:
            count = arity[1]
            kwargs.update(nargs=count, metavar=tuple(name.upper().split("_")[-1] + str(i) for i in range(count)))
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        if "nargs" in extra:  # a str field that takes several values (--server URL [URL ...])
            kwargs["nargs"] = extra["nargs"]
        if choices and allowed is not None:
            kwargs["choices"] = allowed
        if use_defaults and info.is_required():
            kwargs["required"] = True
        parser.add_argument(flag, **kwargs)
    return names


def model_overrides(args: argparse.Namespace, names: Iterable[str]) -> dict[str, Any]:
    """The fields among ``names`` that the command line gave (see ``use_defaults=False``)."""
    given = vars(args)
    return {name: given[name] for name in names if name in given}


def nearest_field(key: str, names: Iterable[str]) -> str | None:
    """The field ``key`` was most likely meant to be (``crop_size`` → ``crop_size_pixels``), or None.

    A field that starts with ``key`` plus ``_`` (a unit suffix left out) wins; else the closest
    spelling (difflib ratio >= 0.6, dashes read as underscores).
    """
    wanted = key.strip().replace("-", "_").lower()
    names = list(names)
    if wanted in names:
        return wanted
    extended = [name for name in names if name.startswith(wanted + "_")]
    if extended:
        return min(extended, key=len)
    close = difflib.get_close_matches(wanted, names, n=1, cutoff=0.6)
    return close[0] if close else None


def format_validation_error(exc: ValidationError, *, subject: str, fields: Iterable[str] = (),
                            missing_hint: str = "") -> str:
    """One line for a pydantic ``ValidationError``, the same in every command.

    ``invalid <subject>: <field>: <message>; ...``; a message that already names its field (the
    range checks do: ``num_clips (0) must be in [1, 64]``) is not prefixed again. An unknown key
    names the field it was most likely meant to be, among ``fields``. A missing one gets
    ``missing_hint`` (where to give it). Never pydantic's multi-line dump or its URLs.
    """
    names = list(fields)
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if err["type"] == "extra_forbidden":
            guess = nearest_field(loc, names) if names else None
            msg = f"unknown key; did you mean {guess}?" if guess else "unknown key"
            if names and not guess:
                msg += f" (known keys: {', '.join(sorted(names))})"
        elif err["type"] == "missing" and loc:
            hint = missing_hint.replace("{name}", loc).replace("{NAME}", loc.upper())
            msg = f"missing: {hint}" if hint else "missing"
        elif "input_value" not in msg and "input" in err and err["type"] not in ("value_error", "assertion_error"):
            msg = f"{msg}, got {err['input']!r}"
        parts.append(msg if not loc or msg.startswith(loc) else f"{loc}: {msg}")
    return f"invalid {subject}: " + "; ".join(parts)
