"""/docs: Swagger UI served from the files the fastapi-offline package ships (Swagger UI 5 renders
FastAPI's OpenAPI 3.1; swagger-ui-bundle's 4.x cannot). The cart is offline: FastAPI's default /docs and
/redoc load their scripts from a CDN and are a blank page without internet. /redoc is dropped (ReDoc
injects <style> elements, which the CSP refuses); /openapi.json stays. The page has no inline script or
style (the daemon's Content-Security-Policy allows only 'self'): Swagger UI is started by
/docs-assets/init.js."""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import APIRouter
from fastapi.responses import FileResponse, HTMLResponse, Response

from .common import WebContext, error

ASSET_DIR = Path(fastapi_offline.__file__).parent / "static"
ASSETS = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css", "favicon.png": "image/png"}

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>noa-edge API</title>
<link rel="stylesheet" href="/docs-assets/swagger-ui.css">
<link rel="icon" href="/docs-assets/favicon.png">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/docs-assets/swagger-ui-bundle.js"></script>
<script src="/docs-assets/init.js"></script>
</body>
</html>
"""

# validatorUrl null: no badge fetched from the online validator
INIT = """window.ui = SwaggerUIBundle({
  url: "/openapi.json", dom_id: "#swagger-ui", layout: "BaseLayout", deepLinking: true,
  validatorUrl: null, presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset]
});
"""


def build(ctx: WebContext) -> APIRouter:
    router = APIRouter()

    @router.get("/docs", include_in_schema=False)
    def docs():
        return HTMLResponse(PAGE)

    @router.get("/docs-assets/init.js", include_in_schema=False)
    def init():
        return Response(INIT, media_type="text/javascript")

    @router.get("/docs-assets/{name}", include_in_schema=False)
    def asset(name: str):
        if name not in ASSETS or not (ASSET_DIR / name).is_file():
            return error(404, f"no docs asset {name!r}")
        return FileResponse(ASSET_DIR / name, media_type=ASSETS[name])

    return router
