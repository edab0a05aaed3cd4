"""Errors that the user can fix.

Every problem caused by input (a bad option, a missing file, a mask made for
another model) raises :class:`FIAError` with one sentence that names the
problem and the fix. The CLI prints that sentence and exits with status 2;
anything else is a bug and keeps its traceback.
"""


class FIAError(ValueError):
    """A problem with the user's input; the message says what to change."""
