"""The optional API key (every endpoint but /healthz) and CORS (off unless configured)."""

import base64

import pytest

pytestmark = pytest.mark.anyio
KEY = "s3cret-key"
GUARDED = [("GET", "/readyz"), ("GET", "/metrics"), ("GET", "/v1/model"), ("POST", "/detect"), ("GET", "/")]
GUARDED += [("GET", "/docs"), ("GET", "/openapi.json"), ("GET", "/sample.jpg")]


@pytest.fixture(scope="module")
async def keyed(app_factory, serve):
    async with serve(app_factory(api_key=KEY)) as client:
        yield client


async def test_healthz_needs_no_key(keyed):
    assert (await keyed.get("/healthz")).status_code == 200


@pytest.mark.parametrize(("method", "path"), GUARDED)
async def test_everything_else_needs_the_key(keyed, jpeg, method, path):
    body = {"content": jpeg, "headers": {"content-type": "image/jpeg"}} if method == "POST" else {}
    for headers in ({}, {"X-API-Key": "wrong"}, {"Authorization": "Bearer wrong"}, {"X-API-Key": KEY[:-1]}):
        response = await keyed.request(method, path, **{**body, "headers": {**body.get("headers", {}), **headers}})
        assert response.status_code == 401, (headers, response.text)
        assert "API key" in response.json()["detail"]
        assert response.headers["www-authenticate"].startswith("Basic")
    basic = base64.b64encode(f"anyone:{KEY}".encode()).decode()
    for headers in ({"X-API-Key": KEY}, {"Authorization": f"Bearer {KEY}"}, {"Authorization": f"Basic {basic}"}):
        response = await keyed.request(method, path, **{**body, "headers": {**body.get("headers", {}), **headers}})
        assert response.status_code == 200, (headers, response.text)


async def test_the_key_is_documented_in_openapi(keyed):
    schema = (await keyed.get("/openapi.json", headers={"X-API-Key": KEY})).json()
    assert "APIKeyHeader" in schema["components"]["securitySchemes"]
    assert schema["paths"]["/detect"]["post"]["security"]
    assert "401" in schema["paths"]["/detect"]["post"]["responses"]
    assert "security" not in schema["paths"]["/healthz"]["get"]


async def test_no_cors_by_default(app_factory, serve):
    async with serve(app_factory()) as client:
        response = await client.options(
            "/detect", headers={"Origin": "http://elsewhere.example", "Access-Control-Request-Method": "POST"}
        )
        plain = await client.get("/healthz", headers={"Origin": "http://elsewhere.example"})
    assert "access-control-allow-origin" not in response.headers
    assert "access-control-allow-origin" not in plain.headers


async def test_cors_when_configured(app_factory, serve):
    async with serve(app_factory(cors_origins="http://app.example, http://other.example")) as client:
        allowed = await client.options(
            "/detect", headers={"Origin": "http://app.example", "Access-Control-Request-Method": "POST"}
        )
        denied = await client.options(
            "/detect", headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}
        )
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == "http://app.example"
    assert "access-control-allow-origin" not in denied.headers
