"""The one exception type that means "the user gave us something we cannot use"."""


class UserError(Exception):
    """Bad input or state the user can fix; the CLI prints its message on one line and exits non-zero.

    The message names the problem and the fix, e.g. ``"unknown model alias 'sd16'; choose one of
    sd14, sd15, ... or pass a hub id / local path"``.
    """
