"""Exceptions that carry a message a user can act on."""


class PretrainedWeightsUnavailable(RuntimeError):
    """CLIP weights were asked for by tag but are neither cached nor downloadable."""


class CheckpointMismatchError(ValueError):
    """A checkpoint's keys or shapes do not fit the model it is loaded into."""


class ResumeMismatchError(ValueError):
    """A run's output directory holds a run with other settings than the ones asked for."""
