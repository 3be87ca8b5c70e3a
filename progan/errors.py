"""The one base class of the errors progan raises for a user to read.

Every `ProganError` message is one line that names the file, flag or setting at fault and
what was expected; the command-line tools print it as ``progan <command>: error: ...`` and
exit with status 2, or 1 for a `Fault`. Anything else escaping a command is a bug.
"""


class ProganError(Exception):
    """An input, setting or file a user can fix; the message says how."""


class Fault(ProganError):
    """Not a bad input but something that failed while working (a full disk, a data file cut
    short): the message says what was kept and how to go on; exit status 1."""
