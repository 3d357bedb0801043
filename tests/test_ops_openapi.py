"""supervisor/openapi.json against the real app: every route (and method) documented and nothing extra, and real
answers validate against the documented schemas (a tiny JSON-Schema subset checker: jsonschema is not a dependency)."""

from __future__ import annotations

import json
import re

import pytest
from aiohttp import ClientSession

from supervisor.api import OPENAPI_PATH, make_app, start_api
from supervisor.daemon import Supervisor
from supervisor.ids import PHONE_PATTERN, TENANT_ID_PATTERN, validate_phone

SPEC = json.loads(OPENAPI_PATH.read_text())
H = {"X-Internal-Secret": "oa"}


def resolve(schema: dict) -> dict:
    while "$ref" in schema:
        schema = SPEC["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def validate(value, schema: dict, path: str = "$") -> None:
    schema = resolve(schema)
    for sub in schema.get("allOf", []):
        validate(value, sub, path)
    types = schema.get("type")
    if types is not None:
        types = [types] if isinstance(types, str) else types
        pytypes = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None),
                   "integer": int, "number": (int, float)}
        ok = any(isinstance(value, pytypes[t]) and not (t in ("integer", "number") and isinstance(value, bool))
                 for t in types)
        assert ok, f"{path}: {value!r} is not {types}"
    if "enum" in schema:
        assert value in schema["enum"], f"{path}: {value!r} not in {schema['enum']}"
    if isinstance(value, dict):
        for key in schema.get("required", []):
            assert key in value, f"{path}: missing {key}"
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        allowed = set(props) | {k for s in schema.get("allOf", []) for k in resolve(s).get("properties", {})}
        for key, v in value.items():
            if key in props:
                validate(v, props[key], f"{path}.{key}")
            elif isinstance(extra, dict):
                validate(v, extra, f"{path}.{key}")
            else:
                assert extra is not False or key in allowed, f"{path}: unexpected key {key}"
    if isinstance(value, list) and "items" in schema:
        for i, v in enumerate(value):
            validate(v, schema["items"], f"{path}[{i}]")


def test_validator_can_fail():
    with pytest.raises(AssertionError):
        validate({"tenants": [{"tenant": "x"}]}, {"$ref": "#/components/schemas/TenantList"})
    with pytest.raises(AssertionError):
        validate({"ok": True, "pid": 1, "uptime": 1, "tenants": 0, "states": {}, "shuttingDown": False, "x": 1},
                 {"$ref": "#/components/schemas/Health"})


def test_tenant_parameters_use_the_one_tenant_id_pattern():
    params = [p for ops in SPEC["paths"].values() for op in ops.values()
              for p in op.get("parameters", []) if p["name"] == "tenant"]  # path ones, and the dead letters' filter
    assert sum(p["in"] == "path" for p in params) == sum("{tenant}" in path for path in SPEC["paths"])
    assert {p["schema"]["pattern"] for p in params} == {TENANT_ID_PATTERN}


def test_the_phone_schema_is_the_one_phone_pattern():
    """The string pattern is ids.PHONE_PATTERN itself; the integer bounds are its shortest and longest numbers."""
    phone = SPEC["components"]["schemas"]["PairingCodeRequest"]["properties"]["phone"]
    assert phone["pattern"] == PHONE_PATTERN
    lo, hi = phone["minimum"], phone["maximum"]
    assert validate_phone(lo) == str(lo) and validate_phone(hi) == str(hi)
    for outside in (lo - 1, hi + 1):
        with pytest.raises(Exception, match="phone"):
            validate_phone(outside)


def test_every_route_is_documented_and_nothing_else(make_settings):
    sup = Supervisor(make_settings())
    app = make_app(sup, sup.settings.api, events=sup.events, metrics=sup.metrics)
    routes = set()
    for route in app.router.routes():
        if route.method == "HEAD":
            continue  # aiohttp adds HEAD for every GET
        path = re.sub(r"\{(\w+):[^}]*\}", r"{\1}", route.resource.canonical)
        routes.add((route.method.lower(), path))
    documented = {(m, p) for p, ops in SPEC["paths"].items() for m in ops if m in ("get", "post", "put", "delete")}
    assert routes == documented


async def test_real_answers_validate(make_settings):
    sup = Supervisor(make_settings(api={"secret": "oa"}))
    runner, port = await start_api(make_app(sup, sup.settings.api, events=sup.events, metrics=sup.metrics),
                                   "127.0.0.1", 0)
    url = f"http://127.0.0.1:{port}"

    async def check(method: str, path: str, template: str, status: int = 200, **kw) -> None:
        async with http.request(method, url + path, headers=H, **kw) as r:
            assert r.status == status, (path, r.status, await r.text())
            body = await r.json()
        media = SPEC["paths"][template][method.lower()]["responses"][str(status)]["content"]["application/json"]
        validate(body, media["schema"])

    try:
        async with ClientSession() as http:
            async with http.get(url + "/openapi.json") as r:  # open: no secret needed
                assert r.status == 200 and (await r.json())["openapi"].startswith("3.")
            await check("GET", "/healthz", "/healthz")
            await check("POST", "/whatsapp/v1/start", "/whatsapp/{tenant}/start")
            await check("GET", "/whatsapp/v1/status", "/whatsapp/{tenant}/status")
            await check("GET", "/whatsapp", "/whatsapp")
            await check("GET", "/whatsapp/v1/qr", "/whatsapp/{tenant}/qr")
            await check("GET", "/whatsapp/nobody/status", "/whatsapp/{tenant}/status", 404)
            await check("POST", "/whatsapp/v1/pairing-code", "/whatsapp/{tenant}/pairing-code", 400, data=b"{")
            await check("POST", "/whatsapp/v1/stop", "/whatsapp/{tenant}/stop")
            await check("GET", "/webhook", "/webhook")  # webhook.url unset: "disabled", deadLetters null
    finally:
        await runner.cleanup()
        await sup.shutdown()
