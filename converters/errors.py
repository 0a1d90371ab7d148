"""The host toolchain's errors: one base class, `ConvertersError`, with every specific error under it.

Catch `ConvertersError` for "any converters failure with a message meant for the user". Each specific
error keeps its historical built-in base too (ValueError, RuntimeError), so existing `except ValueError`
code still catches it, and each stays importable from the module that raises it (e.g.
`converters.train.TrainError`). `converters.dataset.DatasetError` lives next to its `Problem` records
and subclasses `ConvertersError` there.
"""

from __future__ import annotations


class ConvertersError(Exception):
    """Base class of every error the host toolchain raises on purpose (its message says what and why)."""


class TrainExtraMissing(ConvertersError, RuntimeError, ImportError):
    """Raised when a host command needs the [train] extra and it is not installed. Also an ImportError, so a
    command-line host that loads `converters.cli:register` as a plugin can treat it as "extra not installed"."""


class PhantomError(ConvertersError, ValueError):
    """Bad simulate arguments (message says which and why)."""


class TrainError(ConvertersError, ValueError):
    """Bad input for training (dataset, options, run directory); the message says what and why."""


class WeightsError(ConvertersError, ValueError):
    """A requested weights file is missing or does not fit the backbone."""


class NomogramInputError(ConvertersError, ValueError):
    """A run, dataset or option the nomogram stage cannot use (message names the file/field)."""


class ModelInputError(ConvertersError, ValueError):
    """The design matrix or outcome cannot give a meaningful logistic fit (message says why)."""


class SeparationError(ModelInputError):
    """Perfect or quasi-complete separation: maximum-likelihood coefficients are infinite."""


class ConvertError(ConvertersError, ValueError):
    """A run folder, dataset or option that cannot be converted; the message names the file and why."""


class TFLiteFormatError(ConvertersError, ValueError):
    """Bytes that are not the TFLite flatbuffer expected (no TFL3 identifier, several subgraphs, ...)."""


class PreflightError(ConvertersError, ValueError):
    """The file is not a TFLite flatbuffer we can read."""
