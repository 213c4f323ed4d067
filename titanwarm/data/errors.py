"""The error raised for unusable data: missing files, bad records, empty splits, failed downloads."""


class DataError(ValueError):
    """A dataset cannot be read or yields nothing usable."""
