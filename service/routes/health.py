"""Liveness (the process answers) and readiness (the model is loaded and warmed up); GET or HEAD (probes)."""

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse

from ..protocol import Answer, EarlyAnswer, target_path
from ..schemas import Error, Health, Readiness

NOT_READY = "the model is loading or warming up, or the service is shutting down"

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
            {"detail": NOT_READY},
            status_code=503,
            headers={"Retry-After": "1"},
        )
    return Readiness()


def early_liveness(app: FastAPI) -> EarlyAnswer:
    """/healthz answered by ``python -m service``'s protocol as soon as its head is in (``service.protocol``): no
    task and no app to wait for, so a probe is answered in the event loop's turn that reads it, however busy the
    app is. The same answer as the route's, counted in the metrics as the route's is."""
    path = app.url_path_for("healthz").encode()
    alive = Answer(200, Health().model_dump())
    requests = app.state.metrics.requests
    answered = {method.encode(): requests.labels("/healthz", method, "200") for method in ("GET", "HEAD")}

    def answer(method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]) -> Answer | None:
        counter = answered.get(method)
        if counter is None or target_path(target) != path:
            return None
        counter.inc()
        return alive

    return answer
