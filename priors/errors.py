"""User-facing errors: the CLI prints these as one paragraph, without a traceback."""
from __future__ import annotations


class AisdiffError(Exception):
    """An error caused by the user's input (a file, a setting, a store), with a message that says the fix."""


class AnnotationError(AisdiffError, ValueError):
    """An annotation file that cannot be used as it is."""
