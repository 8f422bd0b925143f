"""The one exception type that edgecomp raises for expected mistakes.

The CLI prints ``EdgecompError`` as a single line and exits with code 2; any
other exception is a bug and keeps its traceback.
"""


class EdgecompError(Exception):
    """An expected problem with the user's input, stated with its fix.

    Example:
        >>> raise EdgecompError("unknown model 'vgx'", fix="use one of: vgg")
    """

    exit_code = 2

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem}; {fix}" if fix else problem)


class ContainerError(EdgecompError):
    """A container file that is not a valid ``.ecz`` (truncated, corrupt, foreign).

    The message says which section and byte offset failed and what was expected.
    """
