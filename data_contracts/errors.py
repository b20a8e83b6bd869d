"""The one base of every error the factory expects (bad input, a recipe or config that cannot work, the state of a
data root, a service that cannot be reached): its message says all, so the command line prints it as one
``rlt: ...`` line and keeps the traceback for ``--debug``; any other exception is a bug and keeps its traceback.
Here, in the lowest layer, so every layer's errors can derive from it."""
from __future__ import annotations


class ExpectedError(Exception):
    """An error whose message is the whole story for the user (see the module docstring)."""
