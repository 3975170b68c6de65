"""--help of every command: each default shown once, DATA before MODEL everywhere."""
import argparse

import pytest

from costsmooth.cli import build_parser


def subparsers():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices


@pytest.mark.parametrize("command", sorted(subparsers()))
def test_help_shows_each_default_once(command):
    p = subparsers()[command]
    formatter = p._get_formatter()
    for action in p._actions:
        if not action.help or action.help == argparse.SUPPRESS:
            continue
        text = formatter._expand_help(action)
        assert "(default: None)" not in text and "(default: False)" not in text, (command, text)
        assert text.count("default") <= 1, (command, action.dest, text)
    help_text = p.format_help()
    assert "(default: None)" not in help_text


def test_commands_taking_data_and_model_take_data_first():
    for command in ("certify", "fairness", "calibration"):
        usage = " ".join(subparsers()[command].format_usage().split()).replace("dataset", "DATA")
        assert usage.index("DATA") < usage.index("MODEL"), usage


def test_top_level_help_names_no_markup_and_no_partial_command_list():
    # The description is shown as it is: reST backticks or a hand-kept list of commands that leaves some
    # out (merge, fairness, calibration, admissible-ratio) would reach the user's terminal.
    text = build_parser().format_help()
    description = text.split("positional arguments")[0]
    assert "``" not in description
    assert "COMMAND --help" in description
