"""One exception base for everything cxrlt refuses on purpose (MLflow's ``MlflowException`` pattern).

Every error cxrlt raises for bad input, a missing file or a failed operation is a :class:`CxrltError` whose message
says what went wrong and, where there is one, what to run; the CLI prints that message and exits 1, with no
traceback. Each subclass also derives from the builtin it replaces, so ``except ValueError`` keeps working.
A traceback from the CLI is therefore a bug, never a user error.
"""

from __future__ import annotations


class CxrltError(Exception):
    """Base of every error cxrlt raises on purpose; the message is meant for the user."""


class InvalidInputError(CxrltError, ValueError):
    """An argument, profile value, table or file content that cxrlt cannot use."""


class NotFoundError(CxrltError, FileNotFoundError):
    """A file, directory, model or weight that should exist does not."""


class OperationError(CxrltError, RuntimeError):
    """An operation (a process, a server, a cluster call, a training run) failed or was refused."""
