"""The one exception hierarchy of Chot.

Every error that Chot raises on purpose derives from `ChotError`, so the command line can
catch it, print its message (which says what to do) and exit non-zero without a traceback.
"""


class ChotError(Exception):
    """Base class of every error Chot raises on purpose."""

    exit_code = 1


class ConfigError(ChotError):
    """A configuration file is missing, unreadable or invalid.

    `problems` lists every problem found, each as "key: found X; allowed Y".
    """

    exit_code = 2

    def __init__(self, path, problems):
        self.path = str(path)
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid configuration {self.path}: {len(self.problems)} problem(s)\n{lines}")


class HardwareError(ChotError):
    """A camera, pin or other device could not be used; the message says how to fix it."""


class OutboxError(ChotError):
    """The outbox cannot take an event (full, disk full, or unwritable)."""


class OutboxFull(OutboxError):
    """The outbox reached its configured cap of rows or bytes."""


class CredentialError(ChotError):
    """An issuer key, trust file or declaration input could not be used."""


class UplinkError(ChotError):
    """The MQTT link or a message on it could not be used."""


class CollectorError(ChotError):
    """The collector could not store or answer."""


class ProvisioningError(ChotError):
    """A provisioning step failed; the message says which and what to do."""
