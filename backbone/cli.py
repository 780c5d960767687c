"""What every command line shares: ``--help`` that shows each option's default."""

import argparse


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's help with "(default: ...)" after every option that has a default to show: not after flags
    (store_true and store_false: "--no-x (default: True)" misleads), options without one (None, []) or help
    that already says what happens by default. argparse prints nothing for an option without help, so every
    option needs a help text."""

    def _get_help_string(self, action: argparse.Action) -> str:
        flag = action.nargs == 0 and action.const is not None  # store_true, store_false, store_const
        nothing = flag or action.default is None or action.default == []
        if nothing or "default" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)
