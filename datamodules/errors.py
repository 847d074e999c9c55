"""Errors the data layer raises for the user to read (missing or corrupt files, bad settings)."""


class DatasetError(ValueError):
    """A dataset is missing, incomplete or corrupt; the message says what is expected where."""
