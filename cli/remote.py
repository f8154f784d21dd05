"""Commands that act on a running FlowMaestro API (``flowmaestro serve``) over HTTP: what
needs the store and Prefect together goes through the one service that owns both."""

from __future__ import annotations

import os
from typing import Any

import httpx

DEFAULT_API = "http://127.0.0.1:8000"


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def call_api(method: str, path: str, *, api: str | None = None, key: str | None = None,
             json: Any = None, timeout: float = 30) -> Any:
    """One request to the API at ``api`` (``FLOWMAESTRO_API_URL``, else the local default)
    with the bearer ``key`` (``FLOWMAESTRO_API_KEY``); the JSON answer, or ``ApiError``
    with the API's own message."""
    base = api or os.environ.get("FLOWMAESTRO_API_URL") or DEFAULT_API
    token = key or os.environ.get("FLOWMAESTRO_API_KEY")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = httpx.request(method, base.rstrip("/") + path, json=json, headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        raise ApiError(503, f"the FlowMaestro API at {base} did not answer ({exc}); is 'flowmaestro serve' "
                            "running, and FLOWMAESTRO_API_URL right?") from exc
    if response.status_code >= 400:
        try:
            message = response.json().get("detail") or response.text
        except ValueError:
            message = response.text
        raise ApiError(response.status_code, str(message))
    return response.json() if response.content else None
