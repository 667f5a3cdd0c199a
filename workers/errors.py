"""User-facing errors: each names the problem and the fix, and is printed as one line.

Jobs catch `UserError` at the top level (see `jobs/cli.py`) and exit with status 2 and no
traceback. Anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A mistake in a config, a file or an argument that the user can fix."""


class ConfigError(UserError):
    """A config field has a bad value: the message names the field, the value and the fix."""


class DataError(UserError):
    """A data set file is missing, unreadable or of the wrong shape."""


class ModelFolderError(UserError):
    """A folder is not a model folder this project saved, or its weights are unsafe to load."""
