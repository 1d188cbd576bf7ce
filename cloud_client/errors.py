"""Every way a cloud call can fail, as one tree rooted at CloudError (cloud-api.md 3).

    CloudError
    ├── CloudUnreachable          network error, timeout, dropped connection (retryable)
    ├── CloudResponseError        the server answered with an error status
    │   ├── AuthRejected          401 on any route: a token problem (2.6), whatever the code
    │   ├── Conflict              409 (the concurrent-update message, or a route's own code)
    │   ├── RateLimited           429, with Retry-After when the server gave one
    │   ├── ServerFailure         5xx (retryable)
    │   ├── RouteNotFound         API Gateway's 404 {"message": "Not Found"}: no such route
    │   └── RequestRejected       any other 4xx: never retried unchanged
    ├── MalformedResponse         not JSON, wrong content type, too large, wrong shape, a redirect
    ├── AuthError                 Cognito refused a sign-in or refresh
    │   └── RelinkNeeded          the refresh token is gone (revoked, expired): link again
    └── DownloadRejected          a firmware download that is short, too big or has another sha256

Both error shapes are read into ``CloudResponseError``: the backend's
``{"error": {"code", "message"}}`` (``shape="backend"``) and API Gateway's ``{"message"}``
(``shape="gateway"``).
"""

from __future__ import annotations

from typing import Literal

ErrorShape = Literal["backend", "gateway", "none"]
# cloud-api.md 5: the message that marks a doc_version conflict on saveUserState, claimDevice
# and unclaimDevice, whose codes are the route's catch-all.
CONCURRENT_UPDATE_MESSAGE = "Concurrent update conflict"


class CloudError(Exception):
    """Root of everything cloud_client raises."""


class CloudUnreachable(CloudError):
    def __init__(self, route: str, reason: str) -> None:
        super().__init__(f"{route}: cloud unreachable: {reason}")
        self.route = route
        self.reason = reason


class CloudResponseError(CloudError):
    def __init__(self, route: str, status: int, code: str | None, message: str,
                 shape: ErrorShape, request_id: str | None = None) -> None:
        label = code or "no code"
        super().__init__(f"{route}: HTTP {status} {label}: {message}")
        self.route = route
        self.status = status
        self.code = code
        self.message = message
        self.shape = shape
        self.request_id = request_id

    @property
    def retryable(self) -> bool:
        return False


class AuthRejected(CloudResponseError):
    pass


class Conflict(CloudResponseError):
    @property
    def concurrent_update(self) -> bool:
        """The user-item lock lost a race (cloud-api.md 5): resending the same body is safe."""
        return self.message.startswith(CONCURRENT_UPDATE_MESSAGE)


class RateLimited(CloudResponseError):
    def __init__(self, route: str, status: int, code: str | None, message: str,
                 shape: ErrorShape, request_id: str | None = None,
                 retry_after_s: float | None = None) -> None:
        super().__init__(route, status, code, message, shape, request_id)
        self.retry_after_s = retry_after_s

    @property
    def retryable(self) -> bool:
        return True


class ServerFailure(CloudResponseError):
    @property
    def retryable(self) -> bool:
        return True


class RouteNotFound(CloudResponseError):
    pass


class RequestRejected(CloudResponseError):
    pass


class MalformedResponse(CloudError):
    def __init__(self, route: str, problem: str) -> None:
        super().__init__(f"{route}: malformed response: {problem}")
        self.route = route
        self.problem = problem


class AuthError(CloudError):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"cognito {kind}: {message}")
        self.kind = kind
        self.message = message


class RelinkNeeded(AuthError):
    """The refresh token no longer works (user signed out of the app: GlobalSignOut, 2.4)."""


class DownloadRejected(CloudError):
    def __init__(self, url_host: str, problem: str) -> None:
        super().__init__(f"download from {url_host}: {problem}")
        self.url_host = url_host
        self.problem = problem
