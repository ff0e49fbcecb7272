"""The OpenAI-compatible HTTP server: a FastAPI app (routes, auth, limits, errors) and ``serve()`` to run it.

Endpoints: ``POST /v1/chat/completions``, ``POST /v1/completions``,
``POST /v1/responses``, ``GET /v1/models`` (and ``/v1/models/{id}``),
``GET /health``. The wire format is :mod:`mlx_local._serve_openai` (and
:mod:`mlx_local._serve_responses`); the models, loaded at start or on
demand, are :mod:`mlx_local._serve_models`; each model's generation is
owned by a :class:`~mlx_local._worker.Worker` (several requests queue there,
and a client that goes away cancels its own generation).

Private and safe by default: :func:`serve` binds 127.0.0.1 (and warns for any
other address); with ``api_key`` every ``/v1`` route wants ``Authorization:
Bearer KEY`` (401 otherwise); no CORS headers unless ``cors_origins`` names
origins; request bodies are limited (``max_body_bytes``, 413) and
``max_tokens`` is capped (``max_tokens``: asking for more gets the cap, and
``finish_reason: "length"`` says so). Every error is a JSON body in OpenAI's
shape, ``{"error": {"message", "type", "param", "code"}}``: bad JSON, wrong
types and bad options 400 naming the field, an unknown model 404, a full
queue 429, the hub out of reach (or a model too big to load) 503, anything
unexpected 500 without internals; none of them stops the server.
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import ipaddress
import json
import logging
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Sequence, Union

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ValidationError

from ._model import Model
from ._serve_models import Registry, Served, parse_keep_alive
from ._serve_openai import (
    ChatReply,
    ChatRequest,
    CompletionReply,
    CompletionRequest,
    chat_arguments,
    chat_param,
    completion_arguments,
)
from ._serve_responses import ResponsesReply, ResponsesRequest, responses_arguments, responses_param
from .errors import (
    HubUnreachableError,
    InsufficientMemoryError,
    InvalidModelError,
    InvalidOptionError,
    MLXLocalError,
    ModelNotFoundError,
)

__all__ = ["DEFAULT_MAX_BODY_BYTES", "DEFAULT_MAX_TOKENS", "ApiError", "create_app", "serve"]

log = logging.getLogger("mlx_local.serve")

#: Request bodies larger than this are refused (413).
DEFAULT_MAX_BODY_BYTES = 4 * 2**20
#: The most tokens a request may generate (and what it gets when it does not say).
DEFAULT_MAX_TOKENS = 4096

class ApiError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def api_error(e: BaseException) -> ApiError:
    """The HTTP answer to an exception raised while serving a request."""
    from ._worker import QueueFullError, WorkerClosedError

    if isinstance(e, ApiError):
        return e
    if isinstance(e, InvalidOptionError):
        return ApiError(400, str(e), param=e.option)
    if isinstance(e, QueueFullError):
        return ApiError(429, str(e), type="rate_limit_error", code="queue_full", headers={"Retry-After": "1"})
    if isinstance(e, HubUnreachableError):
        return ApiError(503, str(e), type="server_error", param="model", code="hub_unreachable")
    if isinstance(e, ModelNotFoundError):
        return ApiError(404, str(e), param="model", code="model_not_found")
    if isinstance(e, InsufficientMemoryError):
        return ApiError(503, str(e), type="server_error", param="model", code="insufficient_memory")
    if isinstance(e, InvalidModelError):
        return ApiError(400, str(e), param="model", code="invalid_model")
    if isinstance(e, WorkerClosedError):
        return ApiError(503, str(e), type="server_error", code="model_unloaded")
    if isinstance(e, MLXLocalError):
        return ApiError(500, str(e), type="server_error")
    log.error("unexpected error serving a request", exc_info=e)
    return ApiError(500, "The server failed to answer this request (its log says why).", type="server_error")


def _field_path(loc: Sequence[Any]) -> str:
    """``messages[0].content`` from pydantic's location, without the names of a union's branches (``str``, ``list[...]``)."""
    where = ""
    for part in loc:
        if isinstance(part, int):
            where += f"[{part}]"
        elif part in ("str", "int", "float", "bool") or "[" in part or part[:1].isupper():
            break  # a union's branch, not a field
        else:
            where += f".{part}" if where else part
    return where


def _validation_error(e: ValidationError) -> ApiError:
    first = e.errors()[0]
    where = _field_path(first["loc"])
    missing = first["type"] == "missing"
    got = first.get("input")
    shown = "an object" if isinstance(got, dict) else json.dumps(got, default=str)[:60]
    detail = first["msg"] if missing else f"{first['msg']} (got {shown})"
    return ApiError(400, f"{where or 'body'}: {detail}", param=where or None, code="missing_field" if missing else "invalid_type")


def _worker_factory(max_queue: int, max_concurrency: int | None) -> Any:
    """``f(model) -> Worker``; ``max_concurrency`` goes to a worker that batches (one that runs one at a time has no such knob)."""
    from ._worker import Worker

    batches = "max_concurrency" in inspect.signature(Worker).parameters
    extra: dict[str, Any] = {"max_concurrency": max_concurrency} if batches and max_concurrency is not None else {}

    def make(model: Model) -> Any:
        return Worker(model, max_queue=max_queue, **extra)

    return make


def create_app(
    model: Model | str | None = None,
    *,
    source: str | None = None,
    api_key: str | None = None,
    cors_origins: Sequence[str] = (),
    max_concurrency: int | None = None,
    max_queue: int = 64,
    keep_alive: str | float | None = "5m",
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    allow_load: bool = True,
    allow_download: bool = False,
) -> FastAPI:
    """An ASGI app (FastAPI) answering OpenAI's API with ``model``, to run with uvicorn or mount in another app.

    Args:
        model: the model served from the start, as ``"default"`` and its own
            name: a loaded :class:`~mlx_local.Model`, a source for
            :meth:`Model.load <mlx_local.Model.load>`, or None (the embedded default).
            It is loaded now, before the app exists.
        source: for a loaded ``model``, the source it was loaded from (another name that reaches it).
        api_key: when set, ``/v1`` routes want ``Authorization: Bearer <api_key>``.
        cors_origins: origins a browser may call from (none by default: no CORS headers).
        max_concurrency: the most requests a model generates for at once
            (the batching worker's limit; None: its default).
        max_queue: the most requests waiting or running per model; more get 429.
        keep_alive: how long a model loaded on demand stays once idle
            (``"5m"``, ``"30s"``, seconds; ``-1`` or None: for ever).
        max_body_bytes: the largest request body accepted (413 beyond).
        max_tokens: the most tokens one request may generate.
        allow_load: load other models a request names (on disk), after the memory check.
        allow_download: such loads may download from the Hugging Face hub.
    """
    for name, value in (("max_queue", max_queue), ("max_body_bytes", max_body_bytes), ("max_tokens", max_tokens)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidOptionError(f"{name}={value!r}: give a whole number of at least 1.", option=name)
    if max_concurrency is not None and (isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int)
                                        or max_concurrency < 1):  # fmt: skip
        raise InvalidOptionError(f"max_concurrency={max_concurrency!r}: give a whole number of at least 1.",
                                 option="max_concurrency")  # fmt: skip
    if getattr(model, "distributed", None) is not None:
        # One model over the ranks of a launch: its generations run in lockstep, one at a time through
        # Model.execute (the ranks follow rank 0's calls), and no other model can be loaded on every rank.
        max_concurrency, allow_load = 1, False
    registry = Registry(model, source=source, keep_alive=parse_keep_alive(keep_alive), allow_load=allow_load,
                        allow_download=allow_download, worker_factory=_worker_factory(max_queue, max_concurrency))  # fmt: skip

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await asyncio.to_thread(registry.close)

    app = FastAPI(title="mlx-local", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.registry = registry
    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST", "OPTIONS"],
                           allow_headers=["Authorization", "Content-Type"])  # fmt: skip

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError) -> JSONResponse:
        return e.response()

    @app.exception_handler(MLXLocalError)
    async def _library_error(request: Request, e: MLXLocalError) -> JSONResponse:
        return api_error(e).response()

    @app.exception_handler(Exception)
    async def _any_error(request: Request, e: Exception) -> JSONResponse:  # (starlette logs it too)
        return api_error(e).response()

    @app.exception_handler(404)
    async def _no_route(request: Request, e: Exception) -> JSONResponse:
        return ApiError(404, f"No route {request.method} {request.url.path}.", code="unknown_url").response()

    @app.exception_handler(405)
    async def _no_method(request: Request, e: Exception) -> JSONResponse:
        return ApiError(405, f"{request.url.path} does not take {request.method}.", code="method_not_allowed").response()

    async def authorized(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise ApiError(401, "Missing or wrong API key: send the header Authorization: Bearer <key>.",
                           code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})  # fmt: skip

    async def body_of(request: Request, kind: type[BaseModel]) -> Any:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_body_bytes:
            raise ApiError(413, f"The request body is {length} bytes; this server takes at most {max_body_bytes}.",
                           code="body_too_large")  # fmt: skip
        data = bytearray()
        async for part in request.stream():
            data += part
            if len(data) > max_body_bytes:
                raise ApiError(413, f"The request body is over {max_body_bytes} bytes, the most this server takes.",
                               code="body_too_large")  # fmt: skip
        try:
            parsed = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ApiError(400, f"The request body is not valid JSON ({e}).", code="invalid_json") from None
        if not isinstance(parsed, dict):
            raise ApiError(400, "The request body must be a JSON object.", code="invalid_json")
        try:
            return kind.model_validate(parsed)
        except ValidationError as e:
            raise _validation_error(e) from None

    def room(served: Served) -> None:
        """Refuse at once when the model's queue is full (before preparing: a grammar can take seconds)."""
        from ._worker import QueueFullError

        worker = served.worker
        if worker.pending >= worker.max_queue:
            raise QueueFullError(f"{served.name} has {worker.max_queue} requests waiting or running already; try again later.")

    async def submit(served: Served, request_: Any) -> Any:
        from ._worker import WorkerClosedError

        try:
            return served.worker.submit(request_)
        except WorkerClosedError:  # unloaded between the lookup and now: load it again
            again = await registry.get(served.name)
            return again.worker.submit(request_)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok"}

    @app.get("/v1/models", dependencies=[Depends(authorized)])
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": await asyncio.to_thread(registry.listing)}

    @app.get("/v1/models/{model_id:path}", dependencies=[Depends(authorized)])
    async def get_model(model_id: str) -> dict[str, Any]:
        served = registry.find(model_id)  # also "default", or the source the model was loaded by
        for row in await asyncio.to_thread(registry.listing):
            if row["id"] == (served.name if served else model_id):
                return row
        raise ApiError(404, f"No model {model_id!r} is loaded or on disk.", param="model", code="model_not_found")

    @app.post("/v1/chat/completions", dependencies=[Depends(authorized)])
    async def chat_completions(request: Request) -> Any:
        body = await body_of(request, ChatRequest)
        args = chat_arguments(body, max_tokens_cap=max_tokens)
        served = await registry.get(body.model)
        room(served)
        try:
            prepared = await asyncio.to_thread(lambda: served.model.prepare(**args))
        except InvalidOptionError as e:
            raise ApiError(400, str(e), param=chat_param(e.option, body)) from None
        handle = await submit(served, prepared)
        reply = ChatReply(served.name, served.model.tokenizer, logprobs=bool(body.logprobs))
        return await _answer(request, handle, reply, body.stream, body.stream_options)

    @app.post("/v1/responses", dependencies=[Depends(authorized)])
    async def responses(request: Request) -> Any:
        body = await body_of(request, ResponsesRequest)
        args, chat = responses_arguments(body, max_tokens_cap=max_tokens)
        served = await registry.get(body.model)
        room(served)
        try:
            prepared = await asyncio.to_thread(lambda: served.model.prepare(**args))
        except InvalidOptionError as e:
            raise ApiError(400, str(e), param=responses_param(chat_param(e.option, chat))) from None
        handle = await submit(served, prepared)
        return await _answer(request, handle, ResponsesReply(served.name, body), body.stream, None)

    @app.post("/v1/completions", dependencies=[Depends(authorized)])
    async def completions(request: Request) -> Any:
        body = await body_of(request, CompletionRequest)
        args = completion_arguments(body, max_tokens_cap=max_tokens)
        served = await registry.get(body.model)
        room(served)
        try:
            prepared = await asyncio.to_thread(_raw_request, served.model, args)
        except InvalidOptionError as e:
            raise ApiError(400, str(e), param="prompt" if e.option in ("prompt", "raw") else e.option) from None
        handle = await submit(served, prepared)
        reply = CompletionReply(served.name, served.model.tokenizer, logprobs=body.logprobs)
        return await _answer(request, handle, reply, body.stream, body.stream_options)

    return app


def _raw_request(model: Model, args: dict[str, Any]) -> Any:
    """A request for a prompt sent as-is (text completions), with the KV cache reused."""
    from ._request import Request as Prepared

    opts = dict(args)
    prompt = opts.pop("messages")
    opts.pop("raw", None)
    return Prepared(model.encode(prompt, raw=True), model.default_options.updated(**opts), reuse_cache=True)


Reply = Union[ChatReply, CompletionReply, ResponsesReply]


async def _answer(request: Request, handle: Any, reply: Reply, stream: bool, stream_options: Any) -> Any:
    """The response: a JSON body once the run ends, or server-sent events as it goes."""
    if stream:
        include_usage = bool(stream_options and stream_options.include_usage)
        return StreamingResponse(_events(handle, reply, include_usage), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})  # fmt: skip

    async def drain() -> None:
        async for chunk in handle:
            reply.add(chunk)

    task = asyncio.ensure_future(drain())
    try:
        while True:  # a client that goes away stops its generation
            done, _ = await asyncio.wait({task}, timeout=0.5)
            if done:
                break
            if await request.is_disconnected():
                handle.cancel()
                task.cancel()
                return None
        task.result()
    finally:
        handle.cancel()  # (a no-op once finished)
        if not task.done():
            task.cancel()
    return reply.response()


def _sse(data: Any) -> str:
    head = f"event: {data['type']}\n" if isinstance(data.get("type"), str) and "sequence_number" in data else ""
    return f"{head}data: {json.dumps(data, ensure_ascii=False)}\n\n"


async def _events(handle: Any, reply: Reply, include_usage: bool) -> AsyncIterator[str]:
    """Server-sent events: chat and text completions end with ``data: [DONE]``, responses with ``response.completed``."""
    responses = isinstance(reply, ResponsesReply)
    try:
        opening = reply.first_events() if isinstance(reply, ResponsesReply) else \
            [reply.first_event()] if isinstance(reply, ChatReply) else []  # fmt: skip
        for event in opening:
            yield _sse(event)
        async for chunk in handle:
            for event in reply.events(chunk):
                yield _sse(event)
        if include_usage and not isinstance(reply, ResponsesReply):
            yield _sse(reply.usage_event())
    except Exception as e:  # headers are sent: the error goes in the stream, in OpenAI's shape
        error = api_error(e).body()
        yield _sse({"type": "error", "sequence_number": 0, **error["error"]} if responses else error)
    finally:
        handle.cancel()  # the client went away (or it is over: a no-op)
    if not responses:
        yield "data: [DONE]\n\n"


def _is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve(
    model: Model | str | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    api_key: str | None = None,
    log_level: str = "info",
    **options: Any,
) -> None:
    """Serve ``model`` over OpenAI's HTTP API until interrupted (Ctrl-C).

    Binds 127.0.0.1 by default, so only this machine can connect; any other
    ``host`` logs a warning (and a louder one without ``api_key``). A model
    loaded with ``distributed=`` under a launch is served by rank 0, and
    every other rank's ``serve`` runs rank 0's generations until it stops
    (one at a time; no other model is loaded on demand).
    ``options`` are :func:`create_app`'s (``max_concurrency``,
    ``keep_alive``, ``cors_origins``, ``max_tokens``, ...).

    >>> mlx_local.serve("qwen3-0.6b", port=8080)  # doctest: +SKIP
    """
    import uvicorn

    placement = getattr(model, "distributed", None)
    if placement is not None and placement.rank != 0:  # under a launch: rank 0 serves, this rank follows it
        from ._lockstep import follow

        follow(model)  # type: ignore[arg-type]
        return
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise InvalidOptionError(f"port={port!r}: give a port number from 0 to 65535.", option="port")
    if not _is_loopback(host):
        who = "anyone on the network" if api_key else "anyone on the network, without an API key,"
        log.warning("listening on %s: %s can use this server (the default, 127.0.0.1, is this machine only)", host, who)
    app = create_app(model, api_key=api_key, **options)
    if placement is None:
        uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)
        return
    from ._lockstep import lead

    with lead(model):  # type: ignore[arg-type]
        uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)
