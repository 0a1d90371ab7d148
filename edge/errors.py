"""One base class for every error the device side raises on purpose.

Each stage keeps its own specific error (BundleError, SourceError, InputError, ...) next to its code; they
all derive from EdgeError, so a caller that only needs "a refusal the daemon understands, not a bug" can
catch one class. The specific classes keep their historical second base (ValueError/RuntimeError) so
existing `except ValueError` handlers keep working.
"""

from __future__ import annotations


class EdgeError(Exception):
    """Base of every deliberate refusal on the device side (bad input, bad bundle, lost source, ...)."""


class InputError(EdgeError, ValueError):
    """A user input (image, ROI, lab value) the daemon refuses; `field` names the form field."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
