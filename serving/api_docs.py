"""The API's documentation: ``/docs`` (Swagger UI) and ``/redoc`` that work offline, and an
OpenAPI spec that says what the middleware does, not only what the routes declare.

- **Offline pages.** FastAPI's pages load their JavaScript and CSS from a CDN, so they are
  blank on a network without internet. Here the pages are FastAPI's own
  (``get_swagger_ui_html`` / ``get_redoc_html``, its documented self-hosting recipe) and the
  files come from the ``fastapi-offline`` package, which ships Swagger UI *and* ReDoc (and a
  favicon); they are served under :data:`serving.security.DOCS_ASSETS_PATH`, which needs no
  key, like the pages.
- **Completed spec** (:func:`complete_openapi`). Keys and customer tokens are checked, and
  bodies limited, by middleware the routes never see, so their statuses are added here, for
  every route at once (routes added later get them too): the security schemes (Swagger's
  Authorize button) and each operation's key requirement, the errors 400/401/403/404/408/
  413/422/429/503 where they can happen, all with the one error body ``ErrorOut``, and each
  request body's first schema example as the example "Try it out" sends.
"""

from __future__ import annotations

from importlib.resources import files
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from serving.credentials import KeyScope
from serving.schemas import ErrorOut
from serving.security import DOCS_ASSETS_PATH, PUBLIC_PATHS, required_scope

#: Swagger UI settings: no call to the public validator service (offline), and the key
#: typed into Authorize survives a reload of the page.
SWAGGER_UI_PARAMETERS = {"validatorUrl": None, "persistAuthorization": True}

API_KEY_SCHEME = "ApiKey"
TOKEN_SCHEME = "CustomerToken"
SECURITY_SCHEMES = {
    API_KEY_SCHEME: {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",  # serving.credentials.KEY_HEADER (header names ignore case)
        "description": "An API key: rk_pub_... (publishable, POST /v1/decisions with a "
        "customer token), rk_sec_... (secret: every /v1 route) or rk_adm_... (admin: also "
        "/admin and experiment results). `Authorization: Bearer <key>` works too.",
    },
    TOKEN_SCHEME: {
        "type": "apiKey",
        "in": "header",
        "name": "X-Customer-Token",  # serving.credentials.TOKEN_HEADER
        "description": "Publishable keys only: a short-lived JWT (HS256, `sub` = the customer "
        "id) signed by your site's server with the service's token secret.",
    },
}

#: What each error status means, and the headers it comes with.
ERRORS: dict[int, tuple[str, dict[str, Any]]] = {
    400: ("Malformed JSON (where it breaks, and the field it breaks in)", {}),
    401: (
        "No API key, an unknown one, or (publishable keys) no valid customer token",
        {"WWW-Authenticate": {"schema": {"type": "string"}, "description": "ApiKey realm"}},
    ),
    403: ("The key's scope does not allow this call (or this customer, trace, preview)", {}),
    404: ("Unknown touchpoint, offer, experiment or job (the known ones are named)", {}),
    408: ("The request body did not arrive within the request deadline", {}),
    413: ("The request body is larger than the limit", {}),
    422: ("Invalid fields: each named, with the expected and the received value", {}),
    429: (
        "Rate limit of the key exceeded",
        {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds to wait"}},
    ),
    503: (
        "No answer within the request deadline, or a backend (event log) unavailable",
        {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds to wait"}},
    ),
}
_BODY_METHODS = frozenset({"post", "put", "patch"})
_ERROR_REF = {"$ref": f"#/components/schemas/{ErrorOut.__name__}"}


def install_docs(app: FastAPI) -> None:
    """Serve ``/docs``, ``/docs/oauth2-redirect`` and ``/redoc`` with local files, and the
    completed spec at ``/openapi.json``. The app must be made with ``docs_url=None`` and
    ``redoc_url=None`` (else FastAPI's CDN pages are routed first)."""
    assets = files("fastapi_offline") / "static"
    app.mount(DOCS_ASSETS_PATH, StaticFiles(directory=str(assets)), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"
    redirect_url = app.swagger_ui_oauth2_redirect_url or "/docs/oauth2-redirect"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=redirect_url,
            swagger_js_url=f"{DOCS_ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS_PATH}/favicon.png",
            swagger_ui_parameters=SWAGGER_UI_PARAMETERS,
        )

    @app.get(redirect_url, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=openapi_url,
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{DOCS_ASSETS_PATH}/redoc.standalone.js",
            redoc_favicon_url=f"{DOCS_ASSETS_PATH}/favicon.png",
            with_google_fonts=False,
        )

    def openapi() -> dict[str, Any]:
        # FastAPI's documented extension point: build once, complete, cache.
        if app.openapi_schema is None:
            spec = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            app.openapi_schema = complete_openapi(spec)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def complete_openapi(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` with security schemes, every operation's key requirement and error
    responses, and request examples; changed in place and returned."""
    components = spec.setdefault("components", {})
    components["securitySchemes"] = SECURITY_SCHEMES
    schemas = components.setdefault("schemas", {})
    error_schema = ErrorOut.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, schema in error_schema.pop("$defs", {}).items():
        schemas.setdefault(name, schema)
    schemas.setdefault(ErrorOut.__name__, error_schema)
    for path, item in spec.get("paths", {}).items():
        for method, operation in item.items():
            _complete_operation(path, method, operation, schemas)
    # FastAPI's own 422 body, replaced above by ErrorOut everywhere, is not what we send.
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    return spec


def _complete_operation(
    path: str, method: str, operation: dict[str, Any], schemas: dict[str, Any]
) -> None:
    public = path in PUBLIC_PATHS
    scope = required_scope(method.upper(), path)
    if public:
        operation["security"] = []
    elif scope == KeyScope.publishable:
        # a secret key alone, or a publishable key with its customer's token
        operation["security"] = [{API_KEY_SCHEME: []}, {API_KEY_SCHEME: [], TOKEN_SCHEME: []}]
    else:
        operation["security"] = [{API_KEY_SCHEME: []}]
    if not public:
        note = f"Needs a key of scope **{scope.name}** or higher."
        operation["description"] = f"{operation.get('description', '')}\n\n{note}".strip()
    has_body = "requestBody" in operation
    if has_body:
        _add_request_example(operation["requestBody"], schemas)
    if public:
        return  # probes and docs: their own bodies, no key, no limits worth a contract
    has_params = bool(operation.get("parameters")) or has_body
    statuses = {401, 403, 429, 503}
    if method in _BODY_METHODS:
        statuses |= {408, 413}
    if has_body:
        statuses.add(400)
    if has_params:
        statuses.add(422)
    if any(p.get("in") == "path" for p in operation.get("parameters", [])):
        statuses.add(404)
    responses = operation.setdefault("responses", {})
    for status in sorted(statuses):
        description, headers = ERRORS[status]
        response = responses.setdefault(str(status), {"description": description})
        content = response.setdefault("content", {}).setdefault("application/json", {})
        declared = content.get("schema", {}).get("$ref", "")
        if not declared or declared.endswith("/HTTPValidationError"):
            content["schema"] = dict(_ERROR_REF)
        elif declared != _ERROR_REF["$ref"]:
            # the route's own body for this status (e.g. a model swap's outcome), or the
            # error body when a layer before the route answers (deadline, key, limits)
            content["schema"] = {"anyOf": [{"$ref": declared}, dict(_ERROR_REF)]}
        if headers:
            response.setdefault("headers", {}).update(headers)


def _add_request_example(body: dict[str, Any], schemas: dict[str, Any]) -> None:
    """The body schema's first example as the media type's ``example`` (what Swagger UI's
    "Try it out" and ReDoc show first)."""
    media = body.get("content", {}).get("application/json")
    if media is None or "example" in media or "examples" in media:
        return
    ref = media.get("schema", {}).get("$ref", "")
    examples = schemas.get(ref.rsplit("/", 1)[-1], {}).get("examples")
    if examples:
        media["example"] = examples[0]
