"""The ``hf-cagul`` parsers: dataclass fields as options, and ``--config run.yaml`` run files.

`CommandParser` is a `transformers.HfArgumentParser`: every field of its dataclasses is an
option (``--max-steps`` or ``--max_steps``) with the field's ``metadata["help"]``, except
fields marked ``metadata={"cli": False}`` (`CLI_KEY`), which a run fills in itself. A
subcommand's handler builds its dataclasses from the parsed namespace with `build`.

A run file is YAML (or JSON) whose keys are the subcommand's long options, with dashes or
underscores (``max-steps`` or ``max_steps``). Top-level keys apply to every subcommand that
has the option; a section named after a subcommand applies to that one only and wins over
the top level. The command line wins over both::

    model: llava-hf/llava-1.5-7b-hf
    benchmark: fiubench
    data: ./FIUBench
    forget_split: forget10
    fit:
      output_dir: runs/fiubench-forget10
      max_steps: 500
    evaluate:
      adapter: runs/fiubench-forget10/adapter
      max_rows: 200

Any subcommand gets this behaviour from `parse_args` once it has a ``--config`` option
(`add_config_argument`); options a file may set must not be required by the parser: check
them after parsing with `require`. A subcommand may also name presets
(``set_defaults(presets={"quick": {...}})``): a boolean option that, when true, brings its
own defaults, below the run file's and the command line's values.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from transformers import HfArgumentParser

CLI_KEY = "cli"
"""Field metadata key: ``{"cli": False}`` keeps a field out of the command line."""
CONFIG_DEST = "config"
PRESETS_DEST = "presets"
_NOT_OPTIONS = {"help", CONFIG_DEST, PRESETS_DEST, "handler", "command", "version"}

T = TypeVar("T")


def option_fields(dtype: type) -> list[dataclasses.Field[Any]]:
    """The fields of the dataclass ``dtype`` that are command-line options."""
    return [
        field
        for field in dataclasses.fields(dtype)
        if field.init and field.metadata.get(CLI_KEY, True)
    ]


class CommandParser(HfArgumentParser):
    """`HfArgumentParser` for ``hf-cagul``'s subcommands.

    On top of what `HfArgumentParser` does, fields marked ``metadata={"cli": False}`` are
    left out; every boolean option reads as a flag both ways: ``--bf16`` alone means true
    (also for ``bool | None`` fields) and ``--no-bf16`` false, whatever the field's default,
    since a subcommand may change that default with `set_defaults`; and a field that takes a
    string or a list of strings (``report_to``) takes one value or several.
    """

    @staticmethod
    def _parse_dataclass_field(parser: Any, field: dataclasses.Field[Any]) -> None:
        if not field.metadata.get(CLI_KEY, True):
            return
        # HfArgumentParser narrows ``field.type`` to the one type argparse converts to.
        members = typing.get_args(field.type)
        HfArgumentParser._parse_dataclass_field(parser, field)
        action = parser._option_string_actions[f"--{field.name}"]
        if str in members and list[str] in members:
            action.nargs = "+"
        if field.type not in (bool, bool | None):
            return
        action.nargs, action.const = "?", True
        negative = f"--no_{field.name}"
        negation_help = f"Set --{field.name.replace('_', '-')} to false."
        if negative in parser._option_string_actions:
            parser._option_string_actions[negative].help = negation_help
        else:
            parser.add_argument(
                negative,
                f"--no-{field.name.replace('_', '-')}",
                action="store_false",
                dest=field.name,
                help=negation_help,
            )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's default after its help, but for the ``--no-...`` negations."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if isinstance(action, argparse._StoreFalseAction):
            return action.help
        return super()._get_help_string(action)


def build(args: argparse.Namespace, dtype: type[T], **values: Any) -> T:
    """An instance of the dataclass ``dtype`` from its options in ``args``, with ``values``.

    Fields that are not options (``metadata={"cli": False}``) keep their defaults unless
    ``values`` sets them.
    """
    options = {field.name: getattr(args, field.name) for field in option_fields(dtype)}
    return dtype(**{**options, **values})


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    """Give ``parser`` the ``--config`` option read by `parse_args`."""
    parser.add_argument(
        "--config",
        dest=CONFIG_DEST,
        default=None,
        metavar="RUN.yaml",
        help="YAML/JSON file of options (keys: option names); the command line overrides it",
    )


def load_run_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The mapping in a YAML or JSON run file.

    Raises:
        ValueError: If the file is not valid YAML/JSON or does not hold a mapping.
        OSError: If it cannot be read.
    """
    text = Path(path).read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ValueError(f"{path} is not valid YAML or JSON: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(
            f"{path} must hold a mapping of option names to values (e.g. `max_steps: 500`), "
            f"not a {type(data).__name__}."
        )
    return data


def _normalise(key: Any) -> str:
    return str(key).lstrip("-").replace("-", "_")


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Every key a run file may use for ``parser``: each option's name and its aliases
    (``batch_size`` for ``--batch-size``), without the ``--no-...`` negations."""
    keys: dict[str, argparse.Action] = {}
    for action in parser._actions:
        if action.dest in _NOT_OPTIONS or not action.option_strings:
            continue
        if isinstance(action, argparse._StoreFalseAction):
            continue
        keys[action.dest] = action
        for option in action.option_strings:
            keys[_normalise(option)] = action
    return keys


def _unknown(key: Any, command: str, known: Mapping[str, Any]) -> str:
    close = difflib.get_close_matches(_normalise(key), list(known), n=3)
    hint = f" (did you mean {' or '.join(close)}?)" if close else ""
    return f"{key!r}{hint}; `hf-cagul {command} --help` lists its options"


def command_options(
    config: Mapping[str, Any],
    command: str,
    commands: Mapping[str, argparse.ArgumentParser],
    source: str = "the run file",
) -> dict[str, Any]:
    """The options ``config`` sets for ``command``, by destination, validated against its parser.

    Args:
        config: The run file's mapping (`load_run_config`).
        command: The subcommand being run.
        commands: Every subcommand's parser, by name (top-level keys known to none of them
            are typos; sections for other subcommands are skipped).
        source: How to name the file in messages.

    Raises:
        ValueError: For an option no subcommand has, an option in ``command``'s section that
            it does not have, or a value outside an option's choices.
    """
    known = _options(commands[command])
    everywhere = {key for parser in commands.values() for key in _options(parser)}
    values: dict[str, Any] = {}
    for key, value in config.items():
        if key in commands:
            continue
        name = _normalise(key)
        if name not in everywhere:
            raise ValueError(
                f"{source}: unknown option {_unknown(key, command, known)} "
                "(or use a section named after a subcommand)."
            )
        if name in known:
            values[known[name].dest] = value
    section = config.get(command) or {}
    if not isinstance(section, dict):
        raise ValueError(f"{source}: section {command!r} must be a mapping of options.")
    for key, value in section.items():
        name = _normalise(key)
        if name not in known:
            raise ValueError(
                f"{source}: `hf-cagul {command}` has no option {_unknown(key, command, known)}."
            )
        values[known[name].dest] = value
    for dest, value in values.items():
        action = known[dest]
        items = value if isinstance(value, list) else [value]
        if action.nargs == "+":  # `methods: ga` means the list of one, as `--methods ga`
            values[dest] = value = items
        choices = action.choices
        if choices is not None and any(item not in choices for item in items):
            raise ValueError(
                f"{source}: {dest}={value!r} is not one of {', '.join(map(str, choices))}."
            )
    return values


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Every subcommand parser of ``parser``, by name."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse ``argv``; the run file's options and any preset become the subcommand's defaults.

    The command line is parsed again with each layer of defaults (the run file's, then the
    presets its result turns on below them), so every option given on the command line wins,
    then the run file, then the preset.
    """
    args = parser.parse_args(argv)
    commands = subcommands(parser)
    command = commands[args.command]
    path = getattr(args, CONFIG_DEST, None)
    values = (
        {}
        if path is None
        else command_options(load_run_config(path), args.command, commands, source=str(path))
    )
    if values:
        command.set_defaults(**values)
        args = parser.parse_args(argv)
    presets = getattr(args, PRESETS_DEST, None) or {}
    chosen = [preset for flag, preset in presets.items() if getattr(args, flag)]
    if not chosen:
        return args
    for preset in chosen:
        command.set_defaults(**preset)
    command.set_defaults(**values)
    return parser.parse_args(argv)


def require(args: Any, *names: str) -> None:
    """Raise a clear error for options that neither the command line nor the file set."""
    missing = [name for name in names if getattr(args, name, None) is None]
    if missing:
        flags = ", ".join("--" + name.replace("_", "-") for name in missing)
        raise ValueError(
            f"{flags} required: pass {'it' if len(missing) == 1 else 'them'} on the command "
            "line or set it in the --config file."
        )
