"""/docs: Swagger UI reading /openapi.json, with every asset served by the gateway (no CDN).

The assets come from the swagger-ui-bundle package; the page and its start-up script
are ours (gateway/static). Everything is read once, at start-up.
"""

from __future__ import annotations

from pathlib import Path

from swagger_ui_bundle import swagger_ui_path

STATIC = Path(__file__).resolve().parent / "static"
_VENDORED = ("swagger-ui.css", "swagger-ui-bundle.js", "favicon-32x32.png")
_TYPES = {".css": b"text/css", ".js": b"text/javascript", ".png": b"image/png", ".html": b"text/html"}


def docs_assets() -> dict[str, tuple[bytes, bytes]]:
    """URL path -> (content type, bytes)."""
    assets = {"/docs": (b"text/html; charset=utf-8", (STATIC / "docs.html").read_bytes())}
    assets["/docs/docs.js"] = (b"text/javascript", (STATIC / "docs.js").read_bytes())
    vendored = Path(str(swagger_ui_path))
    for name in _VENDORED:
        assets[f"/docs/{name}"] = (_TYPES[Path(name).suffix], (vendored / name).read_bytes())
    return assets
