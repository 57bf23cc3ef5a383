"""Errors the user can act on. The CLI prints them without a traceback and exits 2."""


class UserError(Exception):
    """Bad input from the user: a missing folder, a wrong flag, an unusable file."""
