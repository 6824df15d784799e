"""The Ecowatt client's error tree: the contract between the client and its callers.

    CentralError                      (central.errors)
    └── EcowattError                  anything that kept us from RTE's signals
        ├── EcowattAuthError          credentials refused, or 401 again after one
        │                             fresh token (RFC 6750 §3.1), or 403: an alarm,
        │                             never retried in a loop
        ├── EcowattRateLimited        429; ``retry_after_s`` from ``Retry-After``, or None
        ├── EcowattUnavailable        5xx, timeout, connection refused or reset: back off
        └── EcowattBadResponse        an answer we cannot use (not JSON, not the v5
                                      shape, an unexpected status)

httpx's exceptions never leave ``central.ecowatt.client``: they are translated
at the boundary with ``raise … from exc``. Every error carries the HTTP
``status`` (None when no answer came) and a short ``detail`` taken from RTE's
error body when there was one; no error ever carries a credential or a token.
"""

from __future__ import annotations

from central.errors import CentralError


class EcowattError(CentralError):
    """Root of the Ecowatt errors; ``status`` is the HTTP status, None without an answer."""

    def __init__(self, message: str, *, status: int | None = None, detail: str = "") -> None:
        super().__init__(f"{message}: {detail}" if detail else message)
        self.status = status
        self.detail = detail


class EcowattAuthError(EcowattError):
    """RTE refused our credentials or a fresh token: raise an alarm, do not loop."""


class EcowattRateLimited(EcowattError):
    """429 Too Many Requests; ``retry_after_s`` is RTE's ``Retry-After`` when it sent one."""

    def __init__(
        self, message: str, *, retry_after_s: float | None, status: int = 429, detail: str = ""
    ) -> None:
        super().__init__(message, status=status, detail=detail)
        self.retry_after_s = retry_after_s


class EcowattUnavailable(EcowattError):
    """RTE did not answer usefully (5xx, timeout, network): try again later, backing off."""


class EcowattBadResponse(EcowattError):
    """RTE answered something we cannot use."""
