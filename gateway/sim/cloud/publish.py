"""Publishing a firmware release the way the release pipeline does it (ota.md 6.6, 6.8):
create the draft with the admin token, PUT the binary to the presigned upload URL, publish."""

from __future__ import annotations

import hashlib

import httpx

from cloud_client.models import CreatedRelease, CreateRelease, PublishRelease, model_json


async def publish_release(http: httpx.AsyncClient, base_url: str, admin_token: str,
                          version: str, binary: bytes | None, *,
                          board: str = "arduino_nano_33_ble", channel: str = "stable",
                          mandatory: bool = False, notes: str = "") -> CreatedRelease:
    """``binary=None`` publishes without uploading: the backend never checks the object
    exists (6.5), so this is the "published release whose binary is missing" case."""
    data = binary or b""
    draft = CreateRelease(version=version, channel=channel, board=board, mandatory=mandatory,
                          notes=notes, artifact_size_bytes=len(data) if binary else None,
                          artifact_sha256=hashlib.sha256(data).hexdigest() if binary else "")
    headers = {"x-admin-token": admin_token}
    created = await http.post(f"{base_url}/ota/releases", json=model_json(draft),
                              headers=headers)
    created.raise_for_status()
    release = CreatedRelease.model_validate(created.json())
    if binary is not None and release.upload_url is not None:
        put = await http.put(release.upload_url, content=binary,
                             headers={"Content-Type": "application/octet-stream"})
        put.raise_for_status()
    published = await http.post(f"{base_url}/ota/releases/{release.version}/publish",
                                json=model_json(PublishRelease(channel=channel, board=board)),
                                headers=headers)
    published.raise_for_status()
    return release
