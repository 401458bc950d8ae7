"""HTTP search service over an index folder: a JSON API (text, image upload, id, health, info) and a web page.

Every bad request gets a 4xx with a one-line `{"error": ...}` body; nothing a client sends can produce a stack
trace or read a file outside the indexed collection.
"""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, Field

from mmd2v2.data.images import open_rgb
from mmd2v2.errors import ImageDecodeError
from mmd2v2.retrieval.batching import QueryBatcher
from mmd2v2.retrieval.collection import image_path
from mmd2v2.retrieval.index_store import SearchHit
from mmd2v2.retrieval.search import Searcher

MAX_K = 100
THUMBNAIL_SIZE = 256


class TextQuery(BaseModel):
    """Body of POST /api/search/text."""

    text: str = Field(min_length=1, max_length=1000)
    k: int = Field(default=10, ge=1, le=MAX_K)
    kind: Literal["image", "text"] | None = None  # only images or only captions


def _hits_json(hits: list[SearchHit]) -> dict[str, Any]:
    return {
        "hits": [
            {
                "id": h.id,
                "score": round(h.score, 6),
                **{k: v for k, v in h.row.items() if k != "id"},
                **({"thumbnail": f"/api/items/{h.id}/thumbnail"} if h.row.get("kind") == "image" else {}),
            }
            for h in hits
        ]
    }


def _validation_message(error: RequestValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path", "form"))
    if first.get("type") == "json_invalid":
        return "request body is not valid JSON"
    return f"field '{where or 'body'}': {first.get('msg', 'invalid value')}"


def create_app(searcher: Searcher, max_upload_bytes: int = 10 * 2**20, batch_queries: bool = True) -> FastAPI:
    """The FastAPI application serving `searcher`'s index (concurrent queries share model forwards by default)."""
    app = FastAPI(title="mmd2v2 search", docs_url="/api/docs", openapi_url="/api/openapi.json")
    index = searcher.index
    if batch_queries:
        texts, images = QueryBatcher(searcher.text_vectors), QueryBatcher(searcher.image_vectors)
        text_vector, image_vector = texts.submit, images.submit
    else:
        text_vector, image_vector = (
            (lambda t: searcher.text_vectors([t])[0]),
            (lambda i: searcher.image_vectors([i])[0]),
        )
    page = resources.files("mmd2v2.retrieval").joinpath("static/search.html").read_text(encoding="utf-8")

    @app.middleware("http")
    async def refuse_oversized(request: Request, call_next: Any) -> Response:
        declared = request.headers.get("content-length", "0")
        if declared.isdigit() and int(declared) > max_upload_bytes + 65536:  # multipart framing on top of the file
            return JSONResponse({"error": f"request larger than {max_upload_bytes} bytes"}, status_code=413)
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, error: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": _validation_message(error)}, status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, error: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(error.detail)}, status_code=error.status_code)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, error: Exception) -> JSONResponse:
        return JSONResponse({"error": f"internal error ({type(error).__name__})"}, status_code=500)

    @app.get("/", response_class=HTMLResponse)
    def search_page() -> str:
        return page

    @app.get("/api/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "count": index.manifest.count}

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        manifest = index.manifest
        return {
            "count": manifest.count,
            "dim": manifest.dim,
            "index_type": manifest.index_type,
            "metric": manifest.metric,
            "checkpoint_id": manifest.checkpoint_id,
            "created": manifest.created,
            "max_k": MAX_K,
            "max_upload_bytes": max_upload_bytes,
        }

    @app.post("/api/search/text")
    def search_text(query: TextQuery) -> dict[str, Any]:
        if not query.text.strip():
            raise HTTPException(422, "field 'text': must not be blank")
        return _hits_json(index.search(text_vector(query.text)[None], query.k, query.kind)[0])

    @app.post("/api/search/image")
    def search_image(
        image: UploadFile = File(...),
        k: int = Form(10, ge=1, le=MAX_K),
        kind: Literal["image", "text"] | None = Form(None),
    ) -> dict[str, Any]:
        data = image.file.read(max_upload_bytes + 1)
        if len(data) > max_upload_bytes:
            raise HTTPException(413, f"upload larger than {max_upload_bytes} bytes")
        try:
            decoded = open_rgb(io.BytesIO(data), "upload")
        except ImageDecodeError as error:
            raise HTTPException(
                415, f"upload is not a readable image (expected JPEG, PNG, WebP, ...): {error.reason}"
            ) from None
        return _hits_json(index.search(image_vector(decoded)[None], k, kind)[0])

    @app.get("/api/search/id/{item_id}")
    def search_id(
        item_id: int, k: int = Query(10, ge=1, le=MAX_K), kind: Literal["image", "text"] | None = Query(None)
    ) -> dict[str, Any]:
        _row(item_id)
        try:
            return _hits_json(searcher.by_id(item_id, k, kind))
        except (FileNotFoundError, ValueError) as error:  # the item's image, encoded again, is missing or unreadable
            raise HTTPException(404, str(error)) from None

    @app.get("/api/items/{item_id}")
    def item(item_id: int) -> dict[str, Any]:
        return {"id": item_id, **_row(item_id)}

    @app.get("/api/items/{item_id}/thumbnail")
    def thumbnail(item_id: int) -> Response:
        row = _row(item_id)
        if row.get("kind") != "image":
            raise HTTPException(404, f"item {item_id} is a {row.get('kind')}, not an image")
        path = _inside_collection(row)
        try:
            opened = open_rgb(path, draft_size=THUMBNAIL_SIZE)
        except ImageDecodeError as error:
            raise HTTPException(404, f"item {item_id}: image file missing or unreadable ({error.reason})") from None
        opened.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
        buffer = io.BytesIO()
        opened.save(buffer, format="JPEG", quality=85)
        return Response(buffer.getvalue(), media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    def _row(item_id: int) -> dict[str, Any]:
        try:
            return index.row(item_id)
        except KeyError:
            raise HTTPException(404, f"no item with id {item_id} (the index has {index.manifest.count})") from None

    def _inside_collection(row: dict[str, Any]) -> Path:
        root = Path(index.manifest.sources[row["source"]]["root"]).resolve()
        path = image_path(row, index.manifest.sources).resolve()
        if not path.is_relative_to(root):
            raise HTTPException(403, "item path lies outside the indexed collection")
        return path

    return app


@contextmanager
def running_server(app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Run `app` with uvicorn in a background thread (port 0 = any free port); yields its base URL."""
    import uvicorn

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the search server did not start")
        time.sleep(0.05)
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
