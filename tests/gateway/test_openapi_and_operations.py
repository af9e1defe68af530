"""/openapi.json, /docs, /metrics, CORS, health, and an RPC added to a proto served with no gateway change."""

from __future__ import annotations

import asyncio
import re

import grpc
import httpx

from tests.gateway.conftest import EchoBuild, RunningGateway, run_gateway
from tests.gateway.echo_service import (
    ECHO_PROTO,
    SERVICE,
    TEST_PROTOS,
    EchoService,
    compile_protos,
    start_server,
)


async def test_openapi_lists_every_binding_with_parameters_and_schemas(echo: httpx.AsyncClient) -> None:
    document = (await echo.get("/openapi.json")).json()
    assert document["openapi"].startswith("3.")
    paths = document["paths"]
    assert set(paths["/v1/things"]) == {"get", "post"}
    assert "/v1/things/{id}:archive" in paths
    assert "/v1/count/{to}:watch" in paths
    listing = paths["/v1/things"]["get"]
    names = {parameter["name"]: parameter for parameter in listing["parameters"]}
    assert names["since"]["schema"] == {"type": "string", "format": "date-time"}
    assert names["kind"]["schema"]["enum"] == ["KIND_UNSPECIFIED", "KIND_SMALL", "KIND_LARGE"]
    assert names["tags"]["schema"]["type"] == "array"
    assert names["filter.minSize"]["in"] == "query"
    assert listing["security"] == []
    update = paths["/v1/things/{thing_id}"]["patch"]
    assert update["security"] == [{"bearerAuth": []}]
    assert update["parameters"][0] == {
        "name": "thing_id",
        "x-field-path": "thing.id",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
    }
    schemas = document["components"]["schemas"]
    thing = schemas["Thing"]  # the short name: unique in the document
    assert thing["properties"]["size"]["type"] == "string"  # int64 is a JSON string
    assert thing["properties"]["createdAt"]["format"] == "date-time"
    assert listing["responses"]["default"] == {"$ref": "#/components/responses/Error"}
    error = document["components"]["responses"]["Error"]
    assert error["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
    assert "multipart/form-data" in paths["/v1/blobs"]["post"]["requestBody"]["content"]
    assert "text/event-stream" in paths["/v1/count/{to}:watch"]["get"]["responses"]["200"]["content"]
    assert listing["description"].startswith("Echoes the query parameters")
    # A proto with no openapi option still gets AIP-style ids, derived from service and method.
    assert listing["operationId"] == "echo.listThings" and listing["tags"] == ["echo"]
    assert listing["summary"] == "Echoes the query parameters it was given."  # its first sentence
    download = paths["/v1/blobs/{id}/content"]["get"]["responses"]
    assert list(download["200"]["content"]) == ["image/png", "image/jpeg", "application/octet-stream"]


async def test_docs_page_and_its_assets_are_served_locally(echo: httpx.AsyncClient) -> None:
    page = await echo.get("/docs")
    assert page.status_code == 200
    assert "text/html" in page.headers["content-type"]
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sources and all(source.startswith("/docs/") for source in sources)  # no CDN
    for source in sources:
        asset = await echo.get(source)
        assert asset.status_code == 200, source
        assert len(asset.content) > 100
    assert "/openapi.json" in (await echo.get("/docs/docs.js")).text


async def test_metrics_show_the_gateway_event_loop_lag(echo: httpx.AsyncClient) -> None:
    """The services' loop-lag histogram, sampled by the gateway's serving loop too."""
    count = 0.0
    for _ in range(50):  # one sample every 0.5 s
        text = (await echo.get("/metrics")).text
        found = re.search(r"^stylestudio_event_loop_lag_seconds_count (\S+)$", text, re.MULTILINE)
        count = float(found.group(1)) if found else 0.0
        if count >= 1:
            break
        await asyncio.sleep(0.2)
    assert count >= 1


async def test_metrics_count_requests_by_route_template_and_status(echo: httpx.AsyncClient) -> None:
    await echo.get("/v1/things/metric-probe-1")
    await echo.get("/v1/things/metric-probe-2")
    await echo.get("/no/such/route")
    text = (await echo.get("/metrics")).text
    assert re.search(
        r'stylestudio_gateway_requests_total\{method="GET",route="/v1/things/\{id\}",status="200"\} \d', text
    )
    assert "metric-probe" not in text
    assert 'route="unmatched",status="404"' in text
    assert (
        'stylestudio_gateway_request_duration_seconds_bucket{le="0.005",method="GET",route="/v1/things/{id}"}'
        in text
    )


async def test_cors_preflight_and_headers_for_an_allowed_origin(echo: httpx.AsyncClient) -> None:
    preflight = await echo.options(
        "/v1/things",
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "https://app.example"
    assert "POST" in preflight.headers["access-control-allow-methods"]
    response = await echo.get("/v1/things/x", headers={"Origin": "https://app.example"})
    assert response.headers["access-control-allow-origin"] == "https://app.example"
    assert "x-request-id" in response.headers["access-control-expose-headers"]
    other = await echo.get("/v1/things/x", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers


async def test_healthz_and_readyz(echo: httpx.AsyncClient) -> None:
    assert (await echo.get("/healthz")).json() == {"status": "ok"}
    ready = await echo.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["services"] == {SERVICE: "SERVING"}


async def test_an_rpc_added_to_the_proto_is_served_and_documented_with_no_gateway_change(
    echo_build: EchoBuild, tmp_path: object
) -> None:
    from pathlib import Path

    root = Path(str(tmp_path)) / "protos"
    proto = root / ECHO_PROTO
    proto.parent.mkdir(parents=True)
    source = (TEST_PROTOS / ECHO_PROTO).read_text()
    added = """
  // Shouts the id back (added by the test).
  rpc Shout(ThingRequest) returns (ThingRequest) {
    option (google.api.http) = {get: "/v1/shout/{id}"};
    option (stylestudio.common.v1.access) = ACCESS_PUBLIC;
  }
}

enum Kind {"""
    proto.write_text(source.replace("}\n\nenum Kind {", added, 1))
    descriptor_set = compile_protos(root, [ECHO_PROTO], Path(str(tmp_path)) / "out", python=False)

    pb = echo_build.pb

    async def shout(request: object, context: grpc.aio.ServicerContext) -> object:
        return pb.ThingRequest(id=request.id.upper(), note="shouted")  # type: ignore[attr-defined]

    shout_handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Shout": grpc.unary_unary_rpc_method_handler(
                shout, pb.ThingRequest.FromString, pb.ThingRequest.SerializeToString
            )
        },
    )
    server, target = await start_server(shout_handler, EchoService(pb).generic_handler())
    running: RunningGateway = await run_gateway(descriptor_set, {SERVICE: target})
    try:
        async with httpx.AsyncClient(base_url=running.url) as client:
            response = await client.get("/v1/shout/hello")
            assert response.status_code == 200
            assert response.json() == {"id": "HELLO", "note": "shouted"}
            document = (await client.get("/openapi.json")).json()
            operation = document["paths"]["/v1/shout/{id}"]["get"]
            assert operation["x-grpc-method"] == f"{SERVICE}.Shout"
            assert operation["summary"] == "Shouts the id back (added by the test)."
            assert (await client.get("/v1/things/x")).status_code == 200  # the old routes still work
    finally:
        await running.close()
        await server.stop(0)
