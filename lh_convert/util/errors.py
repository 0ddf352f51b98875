"""The one exception type whose message is shown to users as a one-line error."""


class LhConvertError(Exception):
    """A problem with the user's input or environment.

    The message is one line that names the problem and the fix; the CLI prints it as
    ``error: <message>`` and exits with status 2, without a traceback.
    """
