"""One exception type for every expected failure, so each CLI can print it as one line."""


class QDError(Exception):
    """A failure the user can act on: bad input, missing file, refused artefact.

    The message is a single line that names the file (or thing) and the problem.
    """


class BitmapFileError(QDError):
    """A file that is not a valid Quick, Draw! bitmap array (uint8, (N, 784))."""

    def __init__(self, path, problem: str):
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}")


def reason_of(exc: BaseException) -> str:
    """An exception's reason on one line: an OS error's strerror, else the first line of its message."""
    strerror = getattr(exc, "strerror", None)
    if strerror:
        return strerror
    return first_line(exc, 200)


def first_line(exc: BaseException, limit: int = 160) -> str:
    """The first line of an exception's message, at most `limit` characters; its type name if it has none."""
    lines = str(exc).strip().splitlines()
    return lines[0][:limit] if lines else type(exc).__name__
