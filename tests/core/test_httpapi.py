"""core.httpapi: routing, credentials, body checks and settings bodies, without a wire."""

from __future__ import annotations

import base64
import json

import pytest

from postoffice.core.httpapi import (
    Endpoint,
    HttpRequest,
    Response,
    Routes,
    WebSocketRoute,
    answer,
    body_limit,
    json_response,
    settings_body,
    too_large,
)


def _echo(request: HttpRequest) -> Response:
    return json_response({"method": request.method, "body": request.body.decode()})


def _ok() -> Response:
    return Response(status=200, body=b"ok\n")


PASSWORD = "s3cret"
ROUTES: Routes = {
    "/plain": _ok,
    "/admin": Endpoint(handlers={"GET": _echo, "PUT": _echo}, password=lambda: PASSWORD),
    "/open": Endpoint(handlers={"GET": _echo}),
}


def _request(
    method: str, path: str, *, body: bytes = b"", headers: tuple[tuple[str, str], ...] = ()
) -> HttpRequest:
    return HttpRequest(method=method, path=path, headers=headers, body=body)


def _bearer(password: str = PASSWORD) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {password}"),)


def _answer(request: HttpRequest) -> Response:
    result = answer(ROUTES, request)
    assert isinstance(result, Response)
    return result


def _message(response: Response) -> str:
    message = json.loads(response.body)["message"]
    assert isinstance(message, str)
    return message


class TestRouting:
    def test_unknown_path_is_404(self) -> None:
        assert _answer(_request("GET", "/nowhere")).status == 404

    def test_plain_route_takes_get_and_head_only(self) -> None:
        assert _answer(_request("GET", "/plain")).status == 200
        refused = _answer(_request("DELETE", "/plain"))
        assert refused.status == 405
        assert dict(refused.headers)["allow"] == "GET, HEAD"

    def test_endpoint_names_its_methods_on_405(self) -> None:
        refused = _answer(_request("POST", "/admin", headers=_bearer()))
        assert refused.status == 405
        assert dict(refused.headers)["allow"] == "GET, HEAD, PUT"
        assert _message(refused) == "method POST not allowed on /admin, allowed: GET, HEAD, PUT"

    def test_head_runs_the_get_handler(self) -> None:
        assert _answer(_request("HEAD", "/open")).status == 200

    def test_websocket_path_without_handshake_is_426(self) -> None:
        routes: Routes = {
            "/ws": WebSocketRoute(opener=lambda r, c: None, max_message_bytes=lambda: 10)  # type: ignore[arg-type,return-value]  # never opened here
        }
        result = answer(routes, _request("GET", "/ws"))
        assert isinstance(result, Response)
        assert result.status == 426

    def test_websocket_path_falls_back_to_its_plain_route(self) -> None:
        routes: Routes = {
            "/events": WebSocketRoute(
                opener=lambda r, c: None,  # type: ignore[arg-type,return-value]  # never opened here
                max_message_bytes=lambda: 10,
                fallback=_ok,
            )
        }
        result = answer(routes, _request("GET", "/events"))
        assert isinstance(result, Response)
        assert result.status == 200


class TestCredentials:
    def test_missing_credentials_are_401_with_a_challenge(self) -> None:
        refused = _answer(_request("GET", "/admin"))
        assert refused.status == 401
        assert "Bearer" in dict(refused.headers)["www-authenticate"]

    def test_bearer_with_the_password_passes(self) -> None:
        assert _answer(_request("GET", "/admin", headers=_bearer())).status == 200

    def test_basic_with_any_user_and_the_password_passes(self) -> None:
        token = base64.b64encode(f"default:{PASSWORD}".encode()).decode()
        headers = (("authorization", f"Basic {token}"),)
        assert _answer(_request("GET", "/admin", headers=headers)).status == 200

    @pytest.mark.parametrize(
        ("authorization", "message"),
        [
            ("Bearer wrong", "invalid password"),
            ("Basic !!!", "malformed basic credentials"),
            (f"Basic {base64.b64encode(b'default:nope').decode()}", "invalid password"),
            ("Digest abc", "unsupported authorization scheme 'digest'"),
        ],
    )
    def test_wrong_credentials_are_403(self, authorization: str, message: str) -> None:
        refused = _answer(_request("GET", "/admin", headers=(("authorization", authorization),)))
        assert refused.status == 403
        assert _message(refused) == message

    def test_no_password_needs_no_credentials(self) -> None:
        assert _answer(_request("GET", "/open")).status == 200


class TestBodies:
    def test_put_needs_json(self) -> None:
        refused = _answer(
            _request(
                "PUT",
                "/admin",
                body=b"a=1",
                headers=(*_bearer(), ("content-type", "application/x-www-form-urlencoded")),
            )
        )
        assert refused.status == 415
        assert _message(refused) == (
            "expected content-type application/json, got application/x-www-form-urlencoded"
        )

    def test_put_with_json_reaches_the_handler(self) -> None:
        headers = (*_bearer(), ("content-type", "application/json; charset=utf-8"))
        done = _answer(_request("PUT", "/admin", body=b"{}", headers=headers))
        assert json.loads(done.body) == {"method": "PUT", "body": "{}"}

    def test_body_limit_is_the_endpoints_for_writes_and_zero_otherwise(self) -> None:
        assert body_limit(ROUTES, "PUT", "/admin") == 64 * 1024
        assert body_limit(ROUTES, "POST", "/admin") == 64 * 1024  # read, then told 405
        assert body_limit(ROUTES, "GET", "/admin") == 0
        assert body_limit(ROUTES, "PUT", "/plain") == 0
        assert body_limit(ROUTES, "PUT", "/nowhere") == 0

    def test_too_large_names_the_limit(self) -> None:
        assert _message(too_large(100)) == "request body exceeds limit 100 bytes"
        assert too_large(0).body == b"request bodies are not accepted\n"


class TestSettingsBody:
    def test_numbers_strings_and_null_become_config_set_text(self) -> None:
        body = settings_body(
            _request("PUT", "/c", body=b'{"a": 5, "b": 1.5, "c": "x", "d": null, "e": 2.0}')
        )
        assert body.refusal is None
        assert body.settings == {"a": "5", "b": "1.5", "c": "x", "d": "", "e": "2"}

    @pytest.mark.parametrize(
        ("raw", "message"),
        [
            (
                b"{",
                "body is not valid JSON: Expecting property name enclosed in double quotes: "
                "line 1 column 2 (char 1)",
            ),
            (b"[]", "expected a JSON object, got list"),
            (b"{}", "expected at least one setting, got none"),
            (b'{"a": true}', "setting 'a' must be a string or a number, got bool"),
            (b'{"a": [1]}', "setting 'a' must be a string or a number, got list"),
            (
                b"\xff",
                "body is not valid JSON: 'utf-8' codec can't decode byte 0xff in position 0: "
                "invalid start byte",
            ),
        ],
    )
    def test_bad_bodies_are_400_with_the_reason(self, raw: bytes, message: str) -> None:
        body = settings_body(_request("PUT", "/c", body=raw))
        assert body.refusal is not None
        assert body.refusal.status == 400
        assert _message(body.refusal) == message
