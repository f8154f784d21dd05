"""The API's one way to Prefect: every call bounded in time, every failure mapped here.

Runs, schedules and deployments all reach the Prefect server through one ``PrefectGateway``
(built in ``create_app``, injected into the services), so a slow or failing Prefect answers
the same way wherever it is met:

- Prefect does not know the object (404)        -> ``NotFound``  (404)
- Prefect refuses the change as conflicting (409) -> ``Conflict`` (409)
- no answer within ``timeout_s``, a transport error, a 5xx or a 429
                                                 -> ``Unavailable("prefect")`` (503, Retry-After)

Anything else (a 4xx that means a bug of ours) is raised as it is, a 500.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import httpx
from prefect.client.orchestration import PrefectClient
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound, PrefectHTTPStatusError

from store.errors import Conflict, NotFound, Unavailable

T = TypeVar("T")


class PrefectGateway:
    def __init__(self, client: PrefectClient, timeout_s: float = 20.0):
        """``client``: the process's one Prefect client (and connection pool). ``timeout_s``:
        the longest one call may take, Prefect's own retries of 429/503 included."""
        self.client = client
        self.timeout_s = timeout_s

    async def call(self, what: str, call: Callable[[PrefectClient], Awaitable[T]]) -> T:
        """``call(client)``, answered within ``timeout_s`` or mapped to a domain error;
        ``what`` completes "could not ..." in the messages."""
        try:
            return await asyncio.wait_for(call(self.client), timeout=self.timeout_s)
        except ObjectNotFound as exc:
            raise NotFound(f"Prefect does not know this run or deployment ({what})") from exc
        except ObjectAlreadyExists as exc:
            raise Conflict(f"Prefect refused it as a conflict; could not {what}") from exc
        except (TimeoutError, httpx.TransportError) as exc:
            raise Unavailable("prefect", f"the Prefect server did not answer in time; could not {what}") from exc
        except PrefectHTTPStatusError as exc:
            status = exc.response.status_code
            if status >= 500 or status == 429:
                raise Unavailable("prefect", f"the Prefect server is unavailable ({status}); could not {what}") from exc
            if status == 404:
                raise NotFound(f"Prefect does not know this run or deployment ({what})") from exc
            if status == 409:
                raise Conflict(f"Prefect refused it as a conflict ({what})") from exc
            raise
