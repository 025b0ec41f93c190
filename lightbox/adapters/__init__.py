"""Every side effect on an external system lives in one adapter module here (dvc, feast, mlflow, git)."""


class ServiceUnavailable(ConnectionError):
    """A server the settings name (the results database, the queue) cannot be reached: one line saying
    which setting to check. ``reason``: the driver's own first line."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason or message
