"""User-facing errors: one line, naming the file and place, exit code 2, no traceback."""

from __future__ import annotations


class UserError(Exception):
    """Bad input the user can fix. The CLI prints `str(err)` alone and exits 2."""

    exit_code = 2

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None):
        self.path, self.line = path, line
        where = f"{path}:{line}: " if path and line else (f"{path}: " if path else "")
        super().__init__(f"{where}{message}")


class MultiError(UserError):
    """Several problems found at once (e.g. constitution validation): one line each."""

    def __init__(self, messages: list[str]):
        self.messages = list(messages)
        Exception.__init__(self, "\n".join(self.messages))
