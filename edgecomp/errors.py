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


def first_line(exc: BaseException, default: str | None = None) -> str:
    """The first line of ``str(exc)``, stripped; ``default`` (the exception's type name) if it is empty.

    The one way edgecomp quotes a foreign exception in its own one-line messages.

    Example:
        >>> first_line(ValueError("bad shape\\n  at layer 3")), first_line(KeyError())
        ('bad shape', 'KeyError')
    """
    text = str(exc).strip()
    if text:
        return text.splitlines()[0].strip()
    return type(exc).__name__ if default is None else default


def one_line(exc: BaseException, limit: int = 300) -> str:
    """A record's ``error`` field: :func:`first_line`, after ``Type:`` unless ``exc`` is an EdgecompError.

    At most ``limit`` characters (longer ones end in ``...``).

    Example:
        >>> one_line(ValueError("bad shape")), one_line(EdgecompError("no such file"))
        ('ValueError: bad shape', 'no such file')
    """
    first = first_line(exc, default="")
    if not isinstance(exc, EdgecompError):
        first = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return first if len(first) <= limit else first[:limit - 3] + "..."
