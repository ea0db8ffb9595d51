"""The CORS policy's pure parts: which origin to allow, what counts as the server's own origin, the config value."""

import pytest

from broadcaster.config import Config, config_from_dict
from broadcaster.errors import BadInput
from web.cors import allowed_origin, same_origin


def test_star_allows_any_origin_as_star():
    """With "*" in the list any Origin gets `*`; no Origin header (not a browser) gets nothing."""
    assert allowed_origin("https://vtt.example", ("*",)) == "*"
    assert allowed_origin("null", ("*",)) == "*"
    assert allowed_origin(None, ("*",)) is None


def test_listed_origin_is_echoed_ignoring_case_and_default_port():
    """A listed origin is echoed as the browser sent it; case and an explicit default port do not matter."""
    listed = ("https://vtt.example", "http://dash.office.lan:8080")
    assert allowed_origin("https://VTT.example", listed) == "https://VTT.example"
    assert allowed_origin("https://vtt.example:443", listed) == "https://vtt.example:443"
    assert allowed_origin("http://dash.office.lan:8080", listed) == "http://dash.office.lan:8080"


def test_unlisted_origins_get_nothing():
    """Another scheme, port or host is a different origin."""
    listed = ("https://vtt.example",)
    for origin in ("http://vtt.example", "https://vtt.example:8443", "https://evil.example", "null"):
        assert allowed_origin(origin, listed) is None, origin


def test_same_origin_is_the_host_reached_or_the_public_url():
    """A page served by this server (the Host it reached, or public_url behind a proxy) is same-origin."""
    assert same_origin("http://127.0.0.1:8765", "127.0.0.1:8765")
    assert same_origin("https://radio.example", "radio.example")
    assert same_origin("https://radio.example:443", "radio.example")
    assert same_origin("https://radio.example", "127.0.0.1:8765", public_url="https://radio.example/")
    assert not same_origin("https://evil.example", "radio.example", public_url="https://radio.example")
    assert not same_origin("null", "radio.example")


def test_cors_origins_config():
    """[server] cors_origins defaults to ["*"], takes a list of origins, and refuses anything else clearly."""
    assert Config().server.cors_origins == ("*",)
    assert config_from_dict({"server": {"cors_origins": ["https://vtt.example"]}}).server.cors_origins == (
        "https://vtt.example",
    )
    assert config_from_dict({"server": {"cors_origins": []}}).server.cors_origins == ()
    for bad in ("*", ["https://vtt.example/path"], ["vtt.example"], [3]):
        with pytest.raises(BadInput, match="cors_origins"):
            config_from_dict({"server": {"cors_origins": bad}})
