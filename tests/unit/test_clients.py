"""The client's address: the connection's, unless a trusted balancer reports it in X-Forwarded-For."""

from aiohttp.test_utils import make_mocked_request

from web.clients import PEER_CLIENT, client_address, networks

BALANCERS = networks(["10.0.0.2", "10.0.1.0/24"])


def request(remote: str, forwarded: str | None = None):
    headers = {"X-Forwarded-For": forwarded} if forwarded is not None else {}
    made = make_mocked_request("GET", "/", headers=headers)
    made._transport_peername = (remote, 5555)
    return made


def test_without_trusted_proxies_the_header_is_ignored():
    assert client_address(request("203.0.113.9", "198.51.100.1"), ()) == "203.0.113.9"


def test_a_trusted_balancer_names_the_client():
    assert client_address(request("10.0.0.2", "198.51.100.7"), BALANCERS) == "198.51.100.7"


def test_what_a_client_claims_left_of_the_balancers_entry_is_not_believed():
    claimed = request("10.0.0.2", "1.2.3.4, 198.51.100.7")  # the client sent "1.2.3.4" itself
    assert client_address(claimed, BALANCERS) == "198.51.100.7"


def test_a_chain_of_trusted_proxies_is_walked_from_the_right():
    assert client_address(request("10.0.0.2", "198.51.100.7, 10.0.1.5"), BALANCERS) == "198.51.100.7"


def test_an_untrusted_connection_cannot_claim_another_address():
    assert client_address(request("203.0.113.9", "198.51.100.7"), BALANCERS) == "203.0.113.9"


def test_a_peer_forwarded_request_keeps_the_client_the_peer_saw():
    forwarded = request("10.0.0.3")
    forwarded[PEER_CLIENT] = "198.51.100.8"
    assert client_address(forwarded, BALANCERS) == "198.51.100.8"
