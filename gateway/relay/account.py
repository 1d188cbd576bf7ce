"""The gateway's account on the cloud: its id, the stored link, and a client for the calls
people make by hand (link, claim, unclaim, status). Cloud errors become gateway errors here,
with the cloud_client error kept as the cause."""

from __future__ import annotations

import os
from types import TracebackType

from pydantic import ValidationError

from cloud_client import CloudClient, CognitoAuth, CognitoSettings, sign_in
from cloud_client.auth import read_initiate_auth, token_claims
from cloud_client.errors import AuthError, CloudError, RelinkNeeded
from gateway.config import GatewayConfig
from gateway.errors import CloudFailed, CloudLinkError
from gateway.ops.health import CloudStatus, OutboxView
from gateway.ops.models import ClaimResult
from gateway.store.credentials import FileTokenStore, gateway_id
from gateway.store.outbox import Outbox

NOT_CONFIGURED = ("the cloud is not configured: set [cloud] enabled = true, base_url, "
                  "cognito_endpoint and client_id in the config")


class CloudAccount:
    def __init__(self, config: GatewayConfig) -> None:
        cloud = config.cloud
        if not cloud.enabled or cloud.base_url is None or cloud.cognito_endpoint is None:
            raise CloudLinkError(NOT_CONFIGURED)
        self.config = config
        self.gateway_id = gateway_id(config.cloud_dir)
        self.store = FileTokenStore(config.cloud_dir)
        self.settings = CognitoSettings(cloud.cognito_endpoint, cloud.client_id)
        self.auth = CognitoAuth(self.settings, self.store)
        self.client = CloudClient(cloud.base_url, self.auth)
        self._user_file = config.cloud_dir / "linked_user"

    async def __aenter__(self) -> CloudAccount:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.client.aclose()

    # ---- linking --------------------------------------------------------------------------------

    async def link_with_password(self, username: str, password: str) -> str:
        try:
            tokens = await sign_in(self.client.http, self.settings, username, password)
        except AuthError as exc:
            raise CloudLinkError(f"Cognito refused the sign-in: {exc.message or exc.kind}") \
                from exc
        except CloudError as exc:
            raise CloudFailed(f"sign-in failed: {exc}") from exc
        self.auth.link(tokens)
        return self._remember_user(tokens.id_token)

    async def link_with_refresh_token(self, refresh_token: str) -> str:
        """2.5: the app hands over its refresh token; one refresh proves it works."""
        self.store.save(refresh_token)
        try:
            request = self.auth.refresh_request()
            response = await self.client.http.send(request)
            tokens = read_initiate_auth(response, refreshing=True)
        except RelinkNeeded as exc:
            self.store.clear()
            raise CloudLinkError("that refresh token is revoked or expired") from exc
        except CloudError as exc:
            self.store.clear()
            raise CloudFailed(f"could not check the refresh token: {exc}") from exc
        self.auth.link(tokens)
        return self._remember_user(tokens.id_token)

    def unlink(self) -> None:
        self.auth.unlink()
        self._user_file.unlink(missing_ok=True)

    def _remember_user(self, id_token: str) -> str:
        claims = token_claims(id_token)
        user = str(claims.get("email") or claims.get("sub") or "linked account")
        self._user_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._user_file.write_text(user)
        os.chmod(self._user_file, 0o600)
        return user

    def user(self) -> str | None:
        try:
            return self._user_file.read_text().strip() or None
        except FileNotFoundError:
            return None

    # ---- devices --------------------------------------------------------------------------------

    async def claim(self, serial: str) -> ClaimResult:
        try:
            claimed = await self.client.claim_device(serial)
        except CloudError as exc:
            raise CloudFailed(f"claim {serial}: {exc}") from exc
        return ClaimResult(serial=serial, claimed=True, owner_uid=claimed.owner_uid,
                           detail="claimed for the linked account")

    async def unclaim(self, serial: str, reason: str | None) -> ClaimResult:
        try:
            await self.client.unclaim_device(serial, reason)
        except CloudError as exc:
            raise CloudFailed(f"unclaim {serial}: {exc}") from exc
        return ClaimResult(serial=serial, claimed=False, detail="released")

    # ---- status without the daemon ------------------------------------------------------------

    def offline_status(self) -> CloudStatus:
        """What can be told with the daemon stopped: the link, the outbox as stored, and what
        the relay last wrote of itself."""
        path = self.config.cloud_outbox_path
        outbox = None
        if path.exists():
            store = Outbox(path, self.gateway_id, reader=True)
            try:
                stats = store.stats()
            finally:
                store.close()
            outbox = OutboxView(depth=stats.depth, bytes=stats.bytes,
                                oldest_age_s=stats.oldest_age_s, by_kind=stats.by_kind,
                                dropped=stats.dropped)
        try:
            last: CloudStatus | None = CloudStatus.model_validate_json(
                self.config.cloud_status_path.read_bytes())
        except (FileNotFoundError, ValidationError):
            last = None
        note = "the daemon is not running"
        if last is not None and last.note:
            note += f"; {last.note}"
        return CloudStatus(
            enabled=True, mode=self.config.cloud.mode.value,
            active_mode=last.active_mode if last else None, gateway_id=self.gateway_id,
            link="linked" if self.store.load() else "unlinked", user=self.user(),
            token_expires_in_s=None, outbox=outbox,
            delivered=last.delivered if last else 0, rejected=last.rejected if last else 0,
            last_success_at=last.last_success_at if last else None,
            last_error=last.last_error if last else None, note=note)


def disabled_status(config: GatewayConfig) -> CloudStatus:
    return CloudStatus(enabled=False, mode=config.cloud.mode.value, active_mode=None,
                       gateway_id=None, link="unlinked", user=None, token_expires_in_s=None,
                       outbox=None, note=NOT_CONFIGURED)


async def offline_status(config: GatewayConfig) -> CloudStatus:
    try:
        account = CloudAccount(config)
    except CloudLinkError:
        return disabled_status(config)
    async with account:
        return account.offline_status()


async def claim(config: GatewayConfig, serial: str) -> ClaimResult:
    async with CloudAccount(config) as account:
        return await account.claim(serial)


async def unclaim(config: GatewayConfig, serial: str, reason: str | None) -> ClaimResult:
    async with CloudAccount(config) as account:
        return await account.unclaim(serial, reason)
