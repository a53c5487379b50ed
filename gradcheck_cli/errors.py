"""Errors that end a run with a documented exit code (never a traceback, unless --verbose)."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_USAGE = 2
EXIT_USER_CODE = 3
EXIT_INTERNAL = 4   # a bug in gradcheck itself


def exc_line(exc: BaseException, limit: int = 300) -> str:
    """`Type: first line of the message`, trimmed: how any exception is quoted in a one-line error."""
    if type(exc).__name__ == "RunTimeout":
        return str(exc)
    if isinstance(exc, SystemExit):
        try:
            code = repr(exc.code)
        except Exception:
            code = "..."
        code = code if len(code) <= 80 else code[:79] + "…"
        return f"SystemExit: the code called sys.exit({'' if exc.code is None else code})"
    try:
        text = str(exc).strip()
    except Exception as inner:   # an exception class whose __str__ itself raises
        text = f"(its message could not be shown: __str__ raised {type(inner).__name__})"
    from gradcheck_cli.report.escape import terminal

    first = terminal(text.splitlines()[0].strip()) if text else ""
    if len(first) > limit:
        first = first[:limit - 1] + "…"
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


class GradcheckError(Exception):
    """Base class: a one-line message for the user and the exit code it maps to."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str, *, hint: str | None = None, reason: str | None = None,
                 detail: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        # Set by the measuring code, which knows what went wrong but not which CLI flag or API argument
        # fixes it: the pipeline turns reason/detail into the hint (pipeline.add_hint).
        self.reason = reason
        self.detail = detail

    def one_line(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message

    def __str__(self) -> str:   # what the CLI prints after "error: ", for Python API users too
        return self.one_line()


class InputError(GradcheckError):
    """Usage, configuration or input problem (exit 2): bad spec, missing file, bad shape, bad config."""

    exit_code = EXIT_USAGE


class UserCodeError(GradcheckError):
    """The user's code raised while importing, building, running forward or computing the loss (exit 3)."""

    exit_code = EXIT_USER_CODE

    def __init__(self, message: str, *, phase: str, where: str | None = None, hint: str | None = None,
                 original: BaseException | None = None, reason: str | None = None, detail: str | None = None):
        super().__init__(message, hint=hint, reason=reason, detail=detail)
        self.phase = phase
        self.where = where
        self.original = original

    def one_line(self) -> str:
        loc = f" in {self.where}" if self.where else ""
        text = f"{self.phase} failed{loc}: {self.message}"
        return f"{text} ({self.hint})" if self.hint else text
