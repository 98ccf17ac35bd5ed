"""Every error the HTTP API documents (docs/serving.md, "HTTP API"), produced for real: status, type and the field it names."""

from __future__ import annotations

import base64
import io

import httpx
import pytest
from PIL import Image

from tests.helpers import LiveServer, shape_image, uri
from tests.service.test_media import bomb_png
from vlreward.service.model.formatting import IMAGE_PAD


@pytest.fixture(scope="module")
def server(hf_backend):
    with LiveServer(
        hf_backend, max_items=8, max_responses=4, max_tokens=300, max_images=2, max_body_bytes=200_000
    ) as s:
        yield s


def error_of(response: httpx.Response, status: int, type_: str, param: str | None = "any") -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["type"] == type_ and error["message"]
    if param != "any":
        assert error["param"] == param
    return error


def score(server, items, **extra) -> httpx.Response:
    return httpx.post(server.url + "/score", json={"items": items, **extra}, timeout=30)


def item(**fields) -> dict:
    return {"prompt": "p", "response": "r", **fields}


def test_malformed_base64_is_400_naming_the_image(server):
    error_of(score(server, [item(), item(image="data:image/png;base64,%%%")]), 400, "invalid_request", "items[1].image")


def test_truncated_png_is_400(server):
    raw = base64.b64decode(uri(shape_image()).split(",")[1])
    truncated = base64.b64encode(raw[:60]).decode()
    error_of(
        score(server, [item(images=[uri(shape_image()), truncated])]), 400, "invalid_request", "items[0].images[1]"
    )


@pytest.mark.parametrize("side", [20000, 8000], ids=["over-pillows-bomb-limit", "under-it-over-ours"])
def test_png_claiming_too_many_pixels_is_413_without_decoding(server, monkeypatch, side):
    bomb = base64.b64encode(bomb_png(side, side)).decode()
    monkeypatch.setattr(Image.Image, "load", lambda self: pytest.fail("pixels were decoded"))
    error_of(score(server, [item(image=bomb)]), 413, "too_large", "items[0].image")


def test_unsupported_image_format_is_415(server):
    buffer = io.BytesIO()
    shape_image().save(buffer, format="TIFF")
    error_of(score(server, [item(image=base64.b64encode(buffer.getvalue()).decode())]), 415, "unsupported_media")


def test_too_many_items_is_413(server):
    error_of(score(server, [item()] * 9), 413, "too_large", "items")


def test_too_many_images_in_a_sample_is_413(server):
    error_of(score(server, [item(images=[uri(shape_image())] * 3)]), 413, "too_large", "items[0]")


def test_text_over_the_token_limit_is_413_naming_the_item(server):
    error = error_of(score(server, [item(), item(prompt="word " * 400)]), 413, "too_large", "items[1]")
    assert "300" in error["message"]


def test_wrong_type_is_422_naming_the_field(server):
    error_of(score(server, [item(prompt=42)]), 422, "validation", "items[0].prompt")


def test_missing_response_is_422(server):
    error = error_of(score(server, [{"prompt": "p"}]), 422, "validation", "items[0]")
    assert "response" in error["message"]


def test_unknown_field_is_422(server):
    error_of(score(server, [item(respone="typo")]), 422, "validation", "items[0].respone")


def test_malformed_json_is_400(server):
    response = httpx.post(server.url + "/score", content=b'{"items": [', headers={"content-type": "application/json"})
    error_of(response, 400, "invalid_request")


def test_body_over_the_limit_is_413(server):
    big = "x" * 300_000
    error_of(score(server, [item(prompt=big)]), 413, "too_large", None)


def test_too_many_rank_responses_is_413(server):
    response = httpx.post(server.url + "/rank", json={"prompt": "p", "responses": ["a"] * 5})
    error_of(response, 413, "too_large", "responses")


def test_rank_with_a_final_assistant_turn_is_422(server):
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    response = httpx.post(server.url + "/rank", json={"messages": messages, "responses": ["b"]})
    error_of(response, 422, "validation")


def test_get_reward_query_with_image_pads_but_no_images_is_400_naming_the_index(server):
    query = f"<|im_start|>user\n<|vision_start|>{IMAGE_PAD * 4}<|vision_end|>hi<|im_end|>\n"
    response = httpx.post(server.url + "/get_reward", json={"query": ["<|im_start|>user\nhi<|im_end|>\n", query]})
    error_of(response, 400, "invalid_request", "query[1]")


@pytest.mark.parametrize("timeout_s", [5e-324, 0.5, 3601, "Infinity", "NaN"])
def test_a_timeout_outside_1_to_3600_seconds_is_422_naming_it(server, timeout_s):
    body = '{"items": [{"prompt": "p", "response": "r"}], "timeout_s": ' + f"{timeout_s}}}"  # Infinity/NaN: raw JSON
    reply = httpx.post(server.url + "/score", content=body, headers={"content-type": "application/json"})
    error_of(reply, 422, "validation", "timeout_s")


def test_json_nested_deeper_than_the_parser_allows_is_a_json_400(server):
    deep = b'{"items": ' + b"[" * 90_000 + b"]" * 90_000 + b"}"
    reply = httpx.post(server.url + "/score", content=deep, headers={"content-type": "application/json"})
    error_of(reply, 400, "invalid_request")
    assert httpx.get(server.url + "/ready").status_code == 200


def test_unknown_route_is_a_json_404(server):
    error_of(httpx.get(server.url + "/nope"), 404, "not_found")


def test_draining_server_refuses_new_scoring_with_503(server):
    server.state.begin_drain()
    try:
        error_of(score(server, [item()]), 503, "draining")
        error_of(httpx.get(server.url + "/ready"), 503, "draining")
        assert httpx.get(server.url + "/health").status_code == 200
    finally:
        server.state.draining = False
        server.state.metrics.set_ready(True)
    assert score(server, [item()]).status_code == 200


def test_api_keys_are_required_on_scoring_routes_only(hf_backend):
    with LiveServer(hf_backend, api_keys="key-one, key-two") as live:
        body = {"items": [item()]}
        error_of(httpx.post(live.url + "/score", json=body), 401, "unauthorized")
        wrong = httpx.post(live.url + "/score", json=body, headers={"Authorization": "Bearer key-three"})
        assert wrong.headers["www-authenticate"] == "Bearer"
        error_of(wrong, 401, "unauthorized")
        for key in ("key-one", "key-two"):
            ok = httpx.post(live.url + "/score", json=body, headers={"Authorization": f"Bearer {key}"})
            assert ok.status_code == 200
        assert httpx.get(live.url + "/info").status_code == 401
        for open_path in ("/health", "/ready", "/metrics"):
            assert httpx.get(live.url + open_path).status_code == 200
        openapi = httpx.get(live.url + "/openapi.json").json()  # the schema says so too
        assert "HTTPBearer" in openapi["components"]["securitySchemes"]
        assert openapi["paths"]["/score"]["post"]["security"] and "401" in openapi["paths"]["/info"]["get"]["responses"]


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/a.png",
        "http://10.0.0.1/a.png",
        "http://[::1]/a.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://localhost:1/a.png",
    ],
)
def test_urls_to_private_loopback_and_metadata_addresses_are_refused(hf_backend, url, url_server):
    with LiveServer(hf_backend, allow_urls=True) as live:
        error = error_of(score(live, [item(image=url)]), 400, "invalid_request", "items[0].image")
        assert "non-public" in error["message"]


def test_urls_are_refused_when_disabled(server):
    error = error_of(score(server, [item(image="https://example.com/a.png")]), 400, "invalid_request")
    assert "disabled" in error["message"]
