"""Every error is JSON ``{"detail": "..."}`` (plus ``errors`` for 422s): the handlers that make it so."""

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from .schemas import Error

# Documented on every guarded route when an API key is configured.
UNAUTHORIZED: dict[int | str, dict] = {401: {"model": Error, "description": "missing or wrong API key"}}


def _describe(error: dict) -> str:
    where = ".".join(str(part) for part in error.get("loc", ()) if part not in ("query", "body"))
    return f"{where}: {error.get('msg', 'invalid')}" if where else str(error.get("msg", "invalid"))


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = [
        {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": e.get("type")} for e in exc.errors()
    ]
    detail = "bad request options: " + "; ".join(_describe(e) for e in errors)
    return JSONResponse(Error(detail=detail, errors=errors).model_dump(), status_code=422)


async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    # Starlette re-raises after this response, so the server logs the traceback; the client never sees it.
    return JSONResponse({"detail": "internal error"}, status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, unexpected_error)
