"""The exception family that the command line turns into one-line errors."""


class GatewayError(Exception):
    """A failure caused by the user's input or environment, shown without a traceback."""


class ConfigError(GatewayError):
    """An invalid configuration value; the message names the value and the fix."""


class CertificateError(GatewayError):
    """A certificate or key that cannot be created, read or used."""
