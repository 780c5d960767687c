"""The OpenAPI schema and Swagger UI, as ordinary routes so that the API key guards them too.

The schema is FastAPI's, plus what only the loaded model knows: the class names ``classes`` may take. Options
are optional but never null (neither a query string nor a form field can say null), so null is not offered.
Swagger UI's script and style come from the fastapi-offline package, served here: an edge box is often
offline, and FastAPI's default page loads them from a CDN (a blank page without one).
"""

import copy
from importlib.resources import files

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse

from ..security import page_policy

router = APIRouter(include_in_schema=False)
SWAGGER_FILES = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css", "favicon.png": "image/png"}


def openapi_schema(app: FastAPI) -> dict:
    """FastAPI's schema with the model's class names as the allowed values of the ``classes`` option."""
    if getattr(app.state, "openapi_schema", None) is None:
        schema = copy.deepcopy(app.openapi())
        names = sorted(app.state.engine.card.categories.names)
        detect = schema["paths"]["/detect"]["post"]
        form = detect["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
        for option in [p["schema"] for p in detect.get("parameters", [])] + [form[name] for name in OPTIONS]:
            _drop_null(option)
            if option.get("type") == "array":
                option["items"] = {"type": "string", "enum": names}
        app.state.openapi_schema = schema
    return app.state.openapi_schema


OPTIONS = ("score_threshold", "max_detections", "classes")


def _drop_null(schema: dict) -> None:
    """``{"anyOf": [X, {"type": "null"}], ...}`` -> ``{**X, ...}``, in place."""
    choices = [c for c in schema.get("anyOf", []) if c.get("type") != "null"]
    if "anyOf" in schema and len(choices) == 1:
        del schema["anyOf"]
        schema.update(choices[0])


@router.get("/openapi.json")
async def openapi(request: Request) -> JSONResponse:
    return JSONResponse(openapi_schema(request.app))


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    page = get_swagger_ui_html(
        openapi_url="/openapi.json",
        title=f"{request.app.title} - API docs",
        swagger_js_url="/docs/swagger-ui-bundle.js",
        swagger_css_url="/docs/swagger-ui.css",
        swagger_favicon_url="/docs/favicon.png",
    )
    page.headers["Content-Security-Policy"] = page_policy(page.body.decode(), style_attributes=True)
    return page


@router.get("/docs/{name}")
async def swagger_file(name: str) -> FileResponse:
    if name not in SWAGGER_FILES:
        raise HTTPException(404, f"no such file: {name}")
    return FileResponse(str(files("fastapi_offline") / "static" / name), media_type=SWAGGER_FILES[name])
