"""Liveness (the process answers) and readiness (the model is loaded and warmed up); GET or HEAD (probes)."""

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ..schemas import Error, Health, Readiness

live = APIRouter(tags=["health"])
ready = APIRouter(tags=["health"])


@live.head("/healthz", include_in_schema=False)
@live.get("/healthz", response_model=Health, summary="The process is alive")
async def healthz() -> Health:
    return Health()


@ready.head("/readyz", include_in_schema=False, response_model=None)
@ready.get(
    "/readyz",
    response_model=Readiness,
    summary="The model is loaded and warmed up",
    responses={503: {"model": Error, "description": "still loading or warming up, or shutting down"}},
)
async def readyz(request: Request) -> Readiness | JSONResponse:
    if not request.app.state.ready:
        return JSONResponse(
            {"detail": "the model is loading or warming up, or the service is shutting down"},
            status_code=503,
            headers={"Retry-After": "1"},
        )
    return Readiness()
