"""Typed dependencies: the settings, the loaded model, the batcher and the API key check, all from ``app.state``."""

import hashlib
import hmac
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBasic, HTTPBasicCredentials, HTTPBearer

from runtime import Engine

from .batcher import Batcher
from .budget import Budgets, Lease
from .settings import Settings

REALM = "shufflenet-detect"


# The getters are ``async def``: FastAPI runs a plain ``def`` dependency in its thread pool, a hand-off per
# request that, under load, cost the event loop more than anything else it did (py-spy under bench/hostile.py).
async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


async def get_engine(request: Request) -> Engine:
    return request.app.state.engine


EngineDep = Annotated[Engine, Depends(get_engine)]


async def get_batcher(request: Request) -> Batcher:
    return request.app.state.batcher


BatcherDep = Annotated[Batcher, Depends(get_batcher)]


async def get_budgets(request: Request) -> Budgets:
    return request.app.state.budgets


BudgetsDep = Annotated[Budgets, Depends(get_budgets)]


@dataclass(frozen=True)
class Leases:
    body: Lease
    images: Lease


async def request_leases(budgets: BudgetsDep) -> AsyncIterator[Leases]:
    """This request's shares of the body and admitted-image budgets, given back when it is answered."""
    leases = Leases(Lease(budgets.body_bytes), Lease(budgets.images))
    try:
        yield leases
    finally:
        leases.body.close()
        leases.images.close()


LeasesDep = Annotated[Leases, Depends(request_leases)]


class _LenientBasic(HTTPBasic):
    """HTTP Basic that reads an undecodable ``Authorization: Basic`` header as no credentials: FastAPI's answers
    401 then even with ``auto_error=False``, which would hide a correct X-API-Key sent beside it."""

    async def __call__(self, request: Request) -> HTTPBasicCredentials | None:
        try:
            return await super().__call__(request)
        except HTTPException:
            return None


_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="the service's API key")
_bearer = HTTPBearer(auto_error=False, description="the API key as a bearer token")
_basic = _LenientBasic(auto_error=False, realm=REALM, description="any user name, the API key as password (browsers)")


def _digest(value: str) -> bytes:
    # Hashing first makes the comparison take the same time whatever the lengths.
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).digest()


async def require_api_key(
    settings: SettingsDep,
    header_key: Annotated[str | None, Security(_key_header)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
    basic: Annotated[HTTPBasicCredentials | None, Security(_basic)],
) -> None:
    """401 unless the request carries the configured key (X-API-Key, Bearer token or Basic password)."""
    if settings.api_key is None:
        return
    given = header_key or (bearer.credentials if bearer else None) or (basic.password if basic else None)
    expected = _digest(settings.api_key.get_secret_value())
    if given is None or not hmac.compare_digest(_digest(given), expected):
        raise HTTPException(
            status_code=401,
            detail="missing or wrong API key: send it as the X-API-Key header",
            headers={"WWW-Authenticate": f'Basic realm="{REALM}"'},
        )
