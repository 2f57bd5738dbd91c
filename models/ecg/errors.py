"""Errors raised for ECG input that cannot be analysed.

All derive from the contract's ``InputError`` (a ``ValueError``) through ``EcgInputError``, so
callers that only know the model contract can still catch "bad input" in one place.
"""

from __future__ import annotations

from models.base import InputError


class EcgInputError(InputError):
    """An ECG file or signal that cannot be read or analysed."""


class NoWaveformError(EcgInputError):
    """The file holds no ECG waveform (for example a DICOM image, or an empty sequence)."""


class UnknownUnitsError(EcgInputError):
    """A channel's units cannot be converted to millivolts."""


class EmptySignalError(EcgInputError):
    """The waveform has no samples, no channels, or is too short to analyse."""


class UnsupportedWaveformError(EcgInputError):
    """A waveform encoding or layout this reader does not handle (e.g. mu-law samples)."""
