"""The search page and its JSON API: `create_app(settings)` is the application `imgsearch serve` runs on uvicorn.

Routes (every one behind the token check when IMGSEARCH_SERVE_TOKEN is set, see web.security):

    GET  /                    the page: upload (or drop, or paste) an image, give an image URL, or type a text
    POST /                    the page's form; the answer is the same page with the results
    GET  /images/{image_id}   one image and every page it was seen on, oldest first
    GET  /thumbs/{id}.jpg     a result's thumbnail, from the image store (never from the crawled site)
    POST /api/search          JSON or multipart query -> the same answer as `imgsearch search --json`
    GET  /api/images/{id}     one image and its sources, as JSON
    GET  /api/health          Elasticsearch health, index counts, model names
    GET  /docs                the OpenAPI page (FastAPI's), /openapi.json its schema

Queries go through the query package's Searcher, the same code path as the CLI, built once with the models
loaded at start; every query runs in a worker thread (run_in_threadpool), never on the event loop.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import elastic_transport
import elasticsearch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError
from scrapy.settings import Settings
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException

from crawler.config import load_settings
from index_setup.client import ClusterError, cluster_info, describe_error, display_url, es_client
from index_setup.indices import IndexMissing, index_info
from index_setup.mappings import sources_alias, urls_alias
from pipelines.embedding import Embedder
from pipelines.store import IMAGE_ID
from query.builders import RESULT_FIELDS, all_sources_request
from query.search import Searcher
from web.errors import ServeError, classify
from web.schemas import (
    ErrorBody,
    Health,
    ImageDetail,
    SearchRequest,
    SearchResponse,
    search_request_body,
    validation_message,
)
from web.security import COOKIE, FORM_OVERHEAD, BodyLimit, RequireToken, SecurityHeaders, token_matches, wants_json
from web.store import ImageStore, query_preview
from web.timing import TimedClient, TimedEmbedder, Timings, timed

logger = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
LIST_FIELDS = ("domain", "format")  # form fields that may be repeated
FORM_FIELDS = set(SearchRequest.model_fields) | {"image", "like"}


@dataclass(frozen=True)
class ServeConfig:
    """What the server needs from the settings, read once."""

    index: str
    token: str | None
    max_upload_bytes: int
    default_k: int
    max_k: int
    max_sources: int
    fetch_max_bytes: int
    fetch_max_pixels: int
    allow_private: bool = False

    @classmethod
    def from_settings(cls, settings: Settings, *, allow_private: bool = False) -> ServeConfig:
        return cls(index=settings.get("IMGSEARCH_INDEX"), token=settings.get("IMGSEARCH_SERVE_TOKEN") or None,
                   max_upload_bytes=settings.getint("IMGSEARCH_SERVE_MAX_UPLOAD_BYTES"),
                   default_k=settings.getint("IMGSEARCH_SERVE_DEFAULT_K"),
                   max_k=settings.getint("IMGSEARCH_SERVE_MAX_K"),
                   max_sources=settings.getint("IMGSEARCH_SERVE_MAX_SOURCES"),
                   fetch_max_bytes=settings.getint("IMGSEARCH_FETCH_MAX_BYTES"),
                   fetch_max_pixels=settings.getint("IMGSEARCH_FETCH_MAX_PIXELS"), allow_private=allow_private)


@dataclass
class Query:
    """One search: an image (bytes), an image URL or a text, with its parameters."""

    params: SearchRequest
    image: bytes | None = None


def build_searcher(settings: Settings) -> Searcher:
    """The query package's Searcher, with its model and Elasticsearch time measured per request (web.timing)."""
    return Searcher(settings, embedder=TimedEmbedder(Embedder.from_settings(settings)),
                    client=TimedClient(es_client(settings)))


def load_models(searcher: Searcher) -> None:
    """Load both models now (blocking), so that no request pays for it."""
    searcher.embedder.load_image_model()
    searcher.embedder.load_text_model()


# -- the work, in worker threads --------------------------------------------------------------------------------
def run_search(searcher: Searcher, config: ServeConfig, query: Query) -> dict[str, Any]:
    """The query package's answer to one query (blocking)."""
    params = query.params
    k = params.k or config.default_k
    if k > config.max_k:
        raise ServeError(400, "bad_request", f"k must be at most {config.max_k} (IMGSEARCH_SERVE_MAX_K), got {k}")
    options = {"index": config.index, "sort": params.sort, **params.filters()}
    if query.image is not None:
        return searcher.search_image(query.image, k, params.num_candidates, allow_private=config.allow_private,
                                     **options)
    if params.image_url:
        url = params.image_url.strip()
        # Checked here, not only by the query package: a string that is not an http(s) URL is a file path there.
        if urlsplit(url).scheme.lower() not in ("http", "https"):
            raise ServeError(400, "bad_url", f"the image URL must be an http(s) URL, got {url[:200]!r}")
        return searcher.search_image(url, k, params.num_candidates, allow_private=config.allow_private, **options)
    return searcher.search_text(params.text or "", k, params.num_candidates, **options)


def image_detail(searcher: Searcher, settings: Settings, config: ServeConfig, image_id: str) -> dict[str, Any]:
    """One image's stored fields and its sources, earliest first (blocking)."""
    if not IMAGE_ID.match(image_id):
        raise ServeError(404, "not_found", "no such image: an image id is the 64 hex digits of its SHA-256")
    found = _es_call(settings, searcher.client.search, index=config.index, query={"ids": {"values": [image_id]}},
                     fields=RESULT_FIELDS, _source=False, size=1)
    hits = found["hits"]["hits"]
    if not hits:
        raise ServeError(404, "not_found", f"no image {image_id} in the index {config.index}")
    fields = hits[0].get("fields", {})
    image = {name: (fields.get(name) or [None])[0] for name in RESULT_FIELDS if name != "domains"}
    image.update(image_id=image_id, domains=fields.get("domains", []))
    sources = _es_call(settings, searcher.client.search, index=sources_alias(config.index),
                       **all_sources_request([image_id], config.max_sources))
    return {"image": image, "sources": [hit["_source"] for hit in sources["hits"]["hits"]],
            "sources_total": sources["hits"]["total"]["value"]}


def _es_call(settings: Settings, method: Any, **kwargs: Any) -> Any:
    try:
        return method(**kwargs)
    except elasticsearch.NotFoundError as exc:
        if exc.error == "index_not_found_exception":
            alias = str(kwargs.get("index", "")).removesuffix("-sources")
            raise IndexMissing(f"index {kwargs.get('index')} does not exist: create it with `imgsearch index "
                               f"create --index {alias}` and crawl into it") from exc
        raise ClusterError(describe_error(exc, settings)) from exc
    except (elastic_transport.TransportError, elasticsearch.ApiError) as exc:
        raise ClusterError(describe_error(exc, settings)) from exc


def health(searcher: Searcher, settings: Settings, config: ServeConfig) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body): 200 when Elasticsearch answers and the three indices exist, else 503."""
    embedder = searcher.embedder
    body: dict[str, Any] = {
        "status": "ok",
        "elasticsearch": {"url": display_url(settings)},
        "index": {"alias": config.index},
        "models": {"image": embedder.image_model_name, "text": embedder.text_model_name,
                   "device": embedder.device, "precision": embedder.precision},
    }
    try:
        body["elasticsearch"] = cluster_info(searcher.client, settings)
        rows = _es_call(settings, index_info, client=searcher.client, alias=config.index)
    except ClusterError as exc:
        body["status"] = "unavailable"
        body["elasticsearch"]["error"] = str(exc)
        return 503, body
    names = {config.index: "images", sources_alias(config.index): "sources", urls_alias(config.index): "urls"}
    missing = []
    for row in rows:
        part = names[row["alias"]]
        if row["index"] is None:
            missing.append(row["alias"])
            body["index"][part] = None
            continue
        entry = body["index"].setdefault(part, {"indices": [], "docs": None})
        entry["indices"].append(row["index"])
    try:  # documents as searches see them (the index stats count each image's nested crop hashes too)
        for alias, part in names.items():
            if body["index"].get(part):
                body["index"][part]["docs"] = _es_call(settings, searcher.client.count, index=alias)["count"]
    except (ClusterError, IndexMissing) as exc:
        body["status"] = "unavailable"
        body["index"]["error"] = str(exc)
        return 503, body
    if missing:
        body["status"] = "unavailable"
        body["index"]["error"] = (f"index {', '.join(missing)} does not exist: create it with `imgsearch index "
                                  f"create --index {config.index}` and crawl into it")
        return 503, body
    return 200, body


# -- reading requests -------------------------------------------------------------------------------------------
def _form_fields(form: FormData) -> dict[str, Any]:
    """The form's fields for SearchRequest: empty ones left out (a browser sends every field), lists kept."""
    fields: dict[str, Any] = {}
    for name, value in form.multi_items():
        if name in ("image", "like") or isinstance(value, UploadFile) or value.strip() == "":
            continue
        if name in LIST_FIELDS:
            fields.setdefault(name, []).append(value.strip())
        else:
            fields[name] = value.strip()
    return fields


async def _uploaded(form: FormData, config: ServeConfig) -> bytes | None:
    upload = form.get("image")
    if upload is None or (isinstance(upload, str) and not upload):
        return None
    if not isinstance(upload, UploadFile):
        raise ServeError(400, "bad_request", "image must be a file upload (use image_url for a URL)")
    if not upload.filename and not upload.size:
        return None  # the form's file field, left empty
    if upload.size is not None and upload.size > config.max_upload_bytes:
        raise ServeError(413, "too_large", f"the image is too large ({upload.size} bytes, limit "
                                           f"{config.max_upload_bytes})")
    data = await upload.read(config.max_upload_bytes + 1)
    if len(data) > config.max_upload_bytes:
        raise ServeError(413, "too_large", f"the image is too large (over {config.max_upload_bytes} bytes)")
    return data


def _params(fields: dict[str, Any]) -> SearchRequest:
    try:
        return SearchRequest.model_validate(fields)
    except ValidationError as exc:
        raise ServeError(400, "bad_request", validation_message(exc)) from None


async def read_api_query(request: Request, config: ServeConfig) -> Query:
    """A query from a JSON body, or from a multipart (or url-encoded) form that may carry the image file."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
        form = await request.form(max_files=1, max_fields=len(FORM_FIELDS) + 10)
        unknown = sorted({name for name in form if name not in FORM_FIELDS})
        if unknown:
            raise ServeError(400, "bad_request", f"unknown field(s): {', '.join(unknown)}")
        query = Query(_params(_form_fields(form)), await _uploaded(form, config))
    elif content_type == "application/json":
        try:
            query = Query(SearchRequest.model_validate_json(await request.body()))
        except ValidationError as exc:
            raise ServeError(400, "bad_request", validation_message(exc)) from None
    else:
        raise ServeError(415, "bad_request", "send a JSON body (image_url or text), or a multipart form with an "
                                             "image file (field 'image')")
    given = [name for name, value in (("image", query.image), ("image_url", query.params.image_url),
                                      ("text", query.params.text)) if value is not None]
    if len(given) != 1:
        raise ServeError(400, "bad_request", "give exactly one of image (a file), image_url or text"
                         + (f"; got {', '.join(given)}" if given else ""))
    return query


# -- the application --------------------------------------------------------------------------------------------
def create_app(settings: Settings | None = None, *, searcher: Searcher | None = None,
               allow_private: bool = False) -> FastAPI:
    """The application. Without `searcher`, one is built and its models loaded at start (lifespan), and closed
    at the end; a given one (already loaded by `imgsearch serve`, or shared by tests) is used as it is."""
    settings = settings if settings is not None else load_settings()
    config = ServeConfig.from_settings(settings, allow_private=allow_private)
    store = ImageStore(settings.get("FILES_STORE"), max_bytes=config.fetch_max_bytes,
                       max_pixels=config.fetch_max_pixels)
    templates = Jinja2Templates(directory=HERE / "templates")
    templates.env.filters["human_bytes"] = human_bytes
    templates.env.filters["day"] = lambda value: (value or "")[:10]
    templates.env.filters["when"] = lambda value: (value or "")[:16].replace("T", " ")
    templates.env.filters["href"] = web_href
    templates.env.globals["config"] = config

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own = searcher is None
        app.state.searcher = await run_in_threadpool(build_searcher, settings) if own else searcher
        try:
            await run_in_threadpool(load_models, app.state.searcher)
            logger.info("Serving index %s; models loaded", config.index)
            yield
        finally:
            if own:
                app.state.searcher.close()

    app = FastAPI(title="imgsearch", version=_version(), lifespan=lifespan, redoc_url=None,
                  description="Find where an image, or images matching a text, were seen. The same answers as "
                              "`imgsearch search --json`.")
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.add_middleware(BodyLimit, max_bytes=config.max_upload_bytes + FORM_OVERHEAD)
    app.add_middleware(RequireToken, token=config.token)
    app.add_middleware(SecurityHeaders)

    def current(request: Request) -> Searcher:
        return request.app.state.searcher

    async def in_thread(func: Any, *args: Any) -> tuple[Any, Timings]:
        """Run blocking query code in a worker thread; every failure becomes a ServeError."""
        try:
            return await run_in_threadpool(timed, func, *args)
        except Exception as exc:  # noqa: BLE001 - each is classified, the unexpected ones logged
            raise classify(exc, settings) from None

    def render(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        return templates.TemplateResponse(request, name, context, status_code=status)

    def error_response(request: Request, error: ServeError) -> Response:
        if wants_json(request.scope):
            return JSONResponse(error.body(), status_code=error.status)
        return render(request, "error.html", error.status, error=error)

    @app.exception_handler(ServeError)
    async def on_serve_error(request: Request, exc: ServeError) -> Response:
        return error_response(request, exc)

    @app.exception_handler(HTTPException)
    async def on_http_error(request: Request, exc: HTTPException) -> Response:
        return error_response(request, classify(exc, settings))

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError) -> Response:
        problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ())[1:])}: {e.get('msg')}"
                             for e in exc.errors()[:3])
        return error_response(request, ServeError(400, "bad_request", problems or "invalid request"))

    # -- the page ---------------------------------------------------------------------------------------------
    async def answer_page(request: Request, form: dict[str, Any], query: Query | None = None,
                          like: str | None = None) -> HTMLResponse:
        response, error, preview, timings = None, None, None, None
        try:
            if like is not None:
                data = await run_in_threadpool(store.original, like) if IMAGE_ID.match(like) else None
                if data is None:
                    raise ServeError(404, "not_found", "the original of that image is not in the image store")
                query = Query(query.params if query else SearchRequest(), data)  # the stored original
                preview = f"/thumbs/{like}.jpg"
            if query is not None:
                response, timings = await in_thread(run_search, current(request), config, query)
                if query.image is not None and preview is None:
                    small = await run_in_threadpool(query_preview, query.image, max_bytes=config.fetch_max_bytes,
                                                    max_pixels=config.fetch_max_pixels)
                    preview = f"data:image/jpeg;base64,{base64.b64encode(small).decode()}" if small else None
        except ServeError as exc:
            error = exc
        page = render(request, "index.html", error.status if error else 200, form=form, response=response,
                      error=error, preview=preview)
        if timings is not None:
            page.headers["Server-Timing"] = timings.header()
        return page

    @app.get("/", include_in_schema=False)
    async def page(request: Request, text: str | None = None, k: int | None = None,
                   domain: str | None = None) -> HTMLResponse:
        form = {"text": text or "", "k": k or config.default_k, "domain": domain or "", "image_url": ""}
        if not text:
            return await answer_page(request, form)
        try:
            params = _params({"text": text, "k": k, "domain": domain})
        except ServeError as exc:
            return render(request, "index.html", exc.status, form=form, error=exc)
        return await answer_page(request, form, Query(params))

    @app.post("/", include_in_schema=False)
    async def page_search(request: Request) -> HTMLResponse:
        form_view = {"text": "", "k": config.default_k, "domain": "", "image_url": ""}
        try:
            form = await request.form(max_files=1, max_fields=len(FORM_FIELDS) + 10)
            fields = {k: v for k, v in _form_fields(form).items() if k in SearchRequest.model_fields}
            form_view.update({k: (", ".join(v) if isinstance(v, list) else v) for k, v in fields.items()})
            image = await _uploaded(form, config)
            like = form.get("like") if isinstance(form.get("like"), str) and form.get("like") else None
            # The page searches by what was given, in this order (the script clears the other fields).
            if image is not None or like:
                fields.pop("image_url", None)
            if image is not None or like or fields.get("image_url"):
                fields.pop("text", None)
            if image is None and not like and not fields.get("image_url") and not fields.get("text"):
                raise ServeError(400, "bad_request", "choose, drop or paste an image, give an image URL, or type "
                                                     "a text")
            params = _params(fields)
        except Exception as exc:  # noqa: BLE001 - a form that cannot be read is shown as a message
            error = classify(exc, settings)
            return render(request, "index.html", error.status, form=form_view, error=error)
        return await answer_page(request, form_view, Query(params, image), like=like)

    @app.get("/images/{image_id}", include_in_schema=False)
    async def image_page(request: Request, image_id: str) -> HTMLResponse:
        detail, _ = await in_thread(image_detail, current(request), settings, config, image_id)
        return render(request, "image.html", detail=detail, image=detail["image"])

    @app.get("/thumbs/{image_id}.jpg", include_in_schema=False)
    async def thumb(image_id: str) -> Response:
        found = await run_in_threadpool(store.thumbnail, image_id)
        if found is None:
            raise ServeError(404, "not_found", "no thumbnail for that image in the image store")
        headers = {"Cache-Control": "private, max-age=86400"}  # content-addressed: the same id, the same picture
        if isinstance(found, Path):
            return FileResponse(found, media_type="image/jpeg", headers=headers)
        return Response(found, media_type="image/jpeg", headers=headers)

    @app.get("/login", include_in_schema=False)
    async def login_page(request: Request, next: str = "/") -> Response:  # noqa: A002 - the parameter's name
        if config.token is None:
            return RedirectResponse("/", status_code=303)
        return render(request, "login.html", next=_local_path(next))

    @app.post("/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        form = await request.form(max_files=0, max_fields=5)
        target = _local_path(str(form.get("next") or "/"))
        if config.token is None:
            return RedirectResponse(target, status_code=303)
        if not token_matches(str(form.get("token") or ""), config.token):
            logger.warning("Refused a wrong token from %s", request.client.host if request.client else "?")
            return render(request, "login.html", 401, next=target, wrong=True)
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(COOKIE, config.token, httponly=True, samesite="strict", path="/",
                            secure=request.url.scheme == "https")
        return response

    # -- the API ----------------------------------------------------------------------------------------------
    errors = {status: {"model": ErrorBody, "description": text} for status, text in (
        (400, "a bad request or URL: `error` says why"), (401, "a token is required"),
        (413, "the image is too large"), (415, "not an image"),
        (502, "Elasticsearch refused the search"),
        (503, "Elasticsearch unreachable, the index missing, or the model unusable"))}

    @app.post("/api/search", tags=["search"], summary="Images like an image, or matching a text",
              response_model=None, responses={200: {"model": SearchResponse}, **errors},
              openapi_extra={"requestBody": search_request_body()})
    async def api_search(request: Request) -> JSONResponse:
        """A JSON body with `image_url` or `text`, or a multipart form with the `image` file (and the same
        fields). The answer is `imgsearch search --json`'s: {query, took_ms, results}, each result with its
        sources, earliest first; its time in embedding and in Elasticsearch is in the Server-Timing header."""
        try:
            query = await read_api_query(request, config)
        except Exception as exc:  # noqa: BLE001 - a body that cannot be read is a 4xx with one line
            raise classify(exc, settings) from None
        response, timings = await in_thread(run_search, current(request), config, query)
        return JSONResponse(response, headers={"Server-Timing": timings.header()})

    @app.get("/api/images/{image_id}", tags=["search"], summary="One image and every page it was seen on",
             response_model=None, responses={200: {"model": ImageDetail}, **errors,
                                             404: {"model": ErrorBody, "description": "no such image"}})
    async def api_image(request: Request, image_id: str) -> JSONResponse:
        """The image's stored fields and its sources, earliest first (up to IMGSEARCH_SERVE_MAX_SOURCES; the
        total is `sources_total`)."""
        detail, _ = await in_thread(image_detail, current(request), settings, config, image_id)
        return JSONResponse(detail)

    @app.get("/api/health", tags=["health"], summary="Elasticsearch health, index counts, model names",
             response_model=None, responses={200: {"model": Health}, 503: {"model": Health}})
    async def api_health(request: Request) -> JSONResponse:
        """200 when Elasticsearch answers and the indices exist, else 503 with what is wrong."""
        (status, body), _ = await in_thread(health, current(request), settings, config)
        return JSONResponse(body, status_code=status)

    return app


def _local_path(target: str) -> str:
    """Only a path on this server is a place to go back to after /login."""
    return target if target.startswith("/") and not target.startswith(("//", "/\\")) else "/"


def web_href(url: str | None) -> str:
    """A link target only for http(s) URLs: a crawled page's URL is never trusted to be one."""
    return url if url and urlsplit(url).scheme.lower() in ("http", "https") else "#"


def human_bytes(size: int | None) -> str:
    if not size:
        return ""
    for unit in ("B", "kB", "MB"):
        if size < 1000 or unit == "MB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return ""


def _version() -> str:
    try:
        return metadata.version("imgsearch")
    except metadata.PackageNotFoundError:
        return "0"
