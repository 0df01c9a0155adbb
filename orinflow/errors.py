"""The one exception type that the CLI turns into a single clear line."""


class OrinflowError(Exception):
    """A problem with the user's input (file, shape, YAML, flag): message is shown as-is."""
