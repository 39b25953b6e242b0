"""Errors that end a command with a clear one-line message instead of a traceback."""


class UserFacingError(Exception):
    """Bad input or a missing prerequisite the user can fix; the message says what and how."""
