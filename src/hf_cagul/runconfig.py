"""Run configuration files for ``hf-cagul`` subcommands: ``--config run.yaml``.

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
(`add_config_argument`); options a file may set must not be ``required=True`` in argparse:
check them after parsing with `require`.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

CONFIG_DEST = "config"
_NOT_OPTIONS = {"help", CONFIG_DEST, "handler", "command", "version"}


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


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {
        action.dest: action
        for action in parser._actions
        if action.dest not in _NOT_OPTIONS and action.option_strings
    }


def _normalise(key: Any) -> str:
    return str(key).replace("-", "_")


def command_options(
    config: Mapping[str, Any],
    command: str,
    commands: Mapping[str, argparse.ArgumentParser],
    source: str = "the run file",
) -> dict[str, Any]:
    """The options ``config`` sets for ``command``, validated against its parser.

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
    everywhere = {dest for parser in commands.values() for dest in _options(parser)}
    values: dict[str, Any] = {}
    for key, value in config.items():
        if key in commands:
            continue
        dest = _normalise(key)
        if dest not in everywhere:
            raise ValueError(
                f"{source}: unknown option {key!r}; options of `hf-cagul {command}`: "
                f"{', '.join(sorted(known))} (or a section named after a subcommand)."
            )
        if dest in known:
            values[dest] = value
    section = config.get(command) or {}
    if not isinstance(section, dict):
        raise ValueError(f"{source}: section {command!r} must be a mapping of options.")
    for key, value in section.items():
        dest = _normalise(key)
        if dest not in known:
            raise ValueError(
                f"{source}: `hf-cagul {command}` has no option {key!r}; it has "
                f"{', '.join(sorted(known))}."
            )
        values[dest] = value
    for dest, value in values.items():
        choices = known[dest].choices
        if choices is not None and value not in choices:
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
    """Parse ``argv``; with ``--config``, the file's options become the subcommand's defaults.

    The command line is parsed twice: once to find the subcommand and the file, then again
    with the file's values as defaults, so every option given on the command line wins.
    """
    args = parser.parse_args(argv)
    path = getattr(args, CONFIG_DEST, None)
    if path is None:
        return args
    commands = subcommands(parser)
    values = command_options(load_run_config(path), args.command, commands, source=str(path))
    commands[args.command].set_defaults(**values)
    return parser.parse_args(argv)


def require(args: argparse.Namespace, *names: str) -> None:
    """Raise a clear error for options that neither the command line nor the file set."""
    missing = [name for name in names if getattr(args, name, None) is None]
    if missing:
        flags = ", ".join("--" + name.replace("_", "-") for name in missing)
        raise ValueError(
            f"{flags} required: pass {'it' if len(missing) == 1 else 'them'} on the command "
            "line or set it in the --config file."
        )
