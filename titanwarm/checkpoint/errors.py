"""The two checkpoint errors (a leaf module: the entry point imports them without DCP)."""


class CheckpointError(ValueError):
    """A checkpoint cannot be used (missing, unreadable, incompatible); one clear message."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint folder is incomplete or unreadable (an older one may still be usable)."""
