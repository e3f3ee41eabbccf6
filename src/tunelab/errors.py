"""The base of every error a user can cause and fix: the CLI prints its one-line message."""


class UserError(Exception):
    """Raised for bad input or an unusable environment; never for a bug in tunelab."""
