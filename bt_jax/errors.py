"""The error every module raises for a setting or an input that cannot work. Its own
module, imported by leaf modules (data, checkpoint, parallel, export) that must not
depend on config.py."""


class ConfigError(ValueError):
    """A config value or a command-line choice that cannot work; the message names the fix."""
