"""What every command line shares: --help shows the defaults, and the commands that compute take --threads."""

import importlib

import pytest

# Each command's module, and whether it computes with torch (so takes --threads).
COMMANDS = {
    "tools.train": True,
    "tools.export": True,
    "tools.shrink_dataset": True,  # encodes in --threads threads
    "tools.predict": True,
    "eval.coco": True,
    "detector.complexity": True,
    "backbone.complexity": True,
    "backbone.train": True,
    "detector.synthetic": False,  # renders with OpenCV in --workers processes
}


def _help_blocks(parser) -> dict[str, str]:
    """Each option's help text in ``--help``, whitespace folded, by its first option string."""
    blocks, current = {}, None
    for line in parser.format_help().splitlines():
        stripped = line.strip()
        if line.startswith("  -"):
            current = stripped.split()[0].rstrip(",")
            blocks[current] = stripped
        elif current and line.startswith("    "):
            blocks[current] += " " + stripped
        else:
            current = None
    return {option: " ".join(text.split()) for option, text in blocks.items()}


@pytest.mark.parametrize("module", sorted(COMMANDS))
def test_help_shows_every_default(module):
    parser = importlib.import_module(module).build_parser()
    blocks = _help_blocks(parser)
    for action in parser._actions:
        shown = action.default not in (None, False, [], "==SUPPRESS==")
        if action.option_strings and shown:
            assert "default" in blocks[action.option_strings[0]], (module, action.option_strings[0])


@pytest.mark.parametrize("module", sorted(COMMANDS))
def test_commands_that_compute_take_threads(module):
    options = {s for action in importlib.import_module(module).build_parser()._actions for s in action.option_strings}
    assert ("--threads" in options) == COMMANDS[module]


def test_flags_show_no_default():
    import argparse

    from backbone.cli import HelpFormatter

    parser = argparse.ArgumentParser(formatter_class=HelpFormatter)
    parser.add_argument("--no-paper", dest="paper", action="store_false", help="leave out the paper config")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds")
    blocks = _help_blocks(parser)
    assert blocks["--no-paper"] == "--no-paper leave out the paper config"  # not "(default: True)"
    assert blocks["--json"] == "--json print JSON"
    assert blocks["--rounds"] == "--rounds ROUNDS timed rounds (default: 7)"
