"""GET /: a small page to try the model by hand (pick an image, see the boxes), and the bundled sample image."""

from functools import cache
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, HTMLResponse

from ..security import page_policy

router = APIRouter(include_in_schema=False)
STATIC = Path(__file__).resolve().parents[1] / "static"


@cache
def _page() -> tuple[str, str]:
    html = (STATIC / "index.html").read_text(encoding="utf-8")
    return html, page_policy(html)


@router.get("/", response_class=HTMLResponse)
async def index() -> HTMLResponse:
    html, policy = _page()
    return HTMLResponse(html, headers={"Content-Security-Policy": policy})


@router.get("/sample.jpg")
async def sample() -> FileResponse:
    """A synthetic image of the demo classes (see static/SAMPLE_SOURCE.txt), for the page's "Try the sample" button."""
    return FileResponse(STATIC / "sample.jpg", media_type="image/jpeg")
