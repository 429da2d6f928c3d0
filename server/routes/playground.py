"""GET /: the playground page (server/static/index.html); its script and style are under /static.

Open without the API key, like /docs: the page holds no data, and the key is typed into the page
and sent by its script. The Content-Security-Policy lets the page load and call nothing but this
server, so it works offline and can never pull in third-party code.
"""

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
       "img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")

router = APIRouter(tags=["playground"])


@router.get("/", response_class=FileResponse, include_in_schema=False)
async def playground() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html",
                        headers={"Content-Security-Policy": CSP, "Cache-Control": "no-cache"})
