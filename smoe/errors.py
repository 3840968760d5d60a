"""Typed errors for user mistakes.

Every error a user can cause (a bad path, an unsupported model, a budget that is too small, an unknown
policy or parameter, a prompt that does not fit) is a subclass of `SmoeError`, carries a message that names
the bad value and what is accepted, and is caught by the CLI and printed without a traceback.
Internal invariants use `assert` instead.
"""


class SmoeError(Exception):
    """Base class of every user-facing error of the harness."""


class CheckpointError(SmoeError):
    """The model directory is missing, incomplete or does not match its config."""


class UnsupportedArchitecture(SmoeError):
    """The checkpoint's `model_type` has no family adapter."""


class BudgetError(SmoeError):
    """The device-memory budget (or slot count) cannot run the model with this policy."""


class UnknownPolicy(SmoeError):
    """A policy name that is not registered."""


class PolicyParamError(SmoeError):
    """A policy parameter that the policy does not take, or a value of the wrong type."""


class PolicyError(SmoeError):
    """A policy returned a plan the runtime cannot execute (names the policy and the broken rule)."""


class PromptError(SmoeError):
    """Prompts that are empty or longer than the model's context allows."""


class DataError(SmoeError):
    """Fetched data (benchmark sets, texts) that a command needs is not in the resources folder."""


class RecordError(SmoeError):
    """A file given as run records (`run-table`) that is missing or is not one (names it and what is wanted)."""


class OptionError(SmoeError):
    """Runtime options that cannot go together (names both and what would work)."""
