"""The one error tree of ticketsolver.

Every error the library raises on purpose derives from :class:`TicketSolverError`, so a caller (the CLI,
the service) can catch one type and show the message. Errors caused by bad input also derive from
``ValueError`` so that generic code treating them as bad values keeps working::

    TicketSolverError
    ├── ConfigError (ValueError)              a BuildConfig / VerifyConfig field has a bad value (names it)
    ├── InvalidProblemError (ValueError)     NaN/inf coefficients, wrong shapes, empty batches
    ├── SolverError
    │   ├── SolverUnavailableError           backend's package missing or unlicensed (names the extra)
    │   └── ProblemTooLargeError (ValueError) n beyond what a backend can solve (names the alternatives)
    ├── ConstructionError (ValueError)        target cannot be turned into a pruned random network
    │   └── UnsupportedModuleError            names the module that is not supported
    ├── CheckpointError (ValueError)          corrupt, hostile or unrecognised checkpoint
    ├── TicketFormatError (ValueError)        ticket file unreadable, wrong version, hash mismatch
    ├── VerificationError                     verification could not run (shape mismatch, bad data)
    └── JobError                              a batch job failed or was refused
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "ConfigError",
    "ConstructionError",
    "InvalidProblemError",
    "JobError",
    "ProblemTooLargeError",
    "SolverError",
    "SolverUnavailableError",
    "TicketFormatError",
    "TicketSolverError",
    "UnsupportedModuleError",
    "VerificationError",
]


class TicketSolverError(Exception):
    """Base class of every error ticketsolver raises on purpose."""


class ConfigError(TicketSolverError, ValueError):
    """A stage's configuration (:class:`~ticketsolver.config.BuildConfig`, ``VerifyConfig``) has a bad value;
    the message names the field."""


class InvalidProblemError(TicketSolverError, ValueError):
    """A subset-sum batch is malformed: NaN/inf values, wrong shapes, empty batch, bad parameters."""


class SolverError(TicketSolverError):
    """A solver backend failed or cannot be used."""


class SolverUnavailableError(SolverError):
    """A backend's optional dependency is missing or unlicensed; the message names the extra to install."""


class ProblemTooLargeError(SolverError, ValueError):
    """The problem is beyond what the chosen backend supports; the message names alternatives."""


class ConstructionError(TicketSolverError, ValueError):
    """The target network cannot be turned into a pruned random network."""


class UnsupportedModuleError(ConstructionError):
    """A module of the target network is not supported; the message names it."""


class CheckpointError(TicketSolverError, ValueError):
    """A checkpoint file is corrupt, hostile (pickled code), or of an unrecognised architecture."""


class TicketFormatError(TicketSolverError, ValueError):
    """A ticket file is unreadable, of an unknown format version, or fails its integrity hash."""


class VerificationError(TicketSolverError):
    """Verification could not be carried out (mismatched shapes, unusable data)."""


class JobError(TicketSolverError):
    """A batch job failed or was refused."""
