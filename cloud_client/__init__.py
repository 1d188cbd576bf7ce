"""The AutoWatering cloud in the cloud's language: typed models, the client, Cognito auth and
one error tree (cloud-api.md). No BLE, no gateway policy.

    CloudClient           every route the gateway uses (client.py)
    CognitoAuth           the ID token on JWT routes, refreshed as an httpx.Auth flow (auth.py)
    sign_in               USER_PASSWORD_AUTH once, for linking
    models                the request and response bodies
    errors                CloudError and its tree
"""

from cloud_client.auth import CognitoAuth, CognitoSettings, RefreshTokenStore, Tokens, sign_in
from cloud_client.client import CloudClient, RetryPolicy
from cloud_client.errors import CloudError

__all__ = [
    "CloudClient",
    "CloudError",
    "CognitoAuth",
    "CognitoSettings",
    "RefreshTokenStore",
    "RetryPolicy",
    "Tokens",
    "sign_in",
]
