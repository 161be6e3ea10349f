"""The test bed itself, without Tollgate: when these fail, the other failures are the bed's."""

import socket
import struct

from origin import pattern
from rawhttp import RawClient, request
from testbed import GATEWAY_INTERNET_IP, ORIGIN_IP, TRANSPARENT_PORT, WORKER_IP, in_netns


def test_origin_serves_exact_bytes_without_any_proxy(testbed, origin, marker):
    res = testbed.curl(f"http://{ORIGIN_IP}/bytes/100000?{marker}", ns=testbed.gateway)
    assert res.returncode == 0 and res.stdout == pattern(0, 100000), res.stderr
    [seen] = origin.requests(marker)
    assert seen["client"].startswith(GATEWAY_INTERNET_IP + ":")


def test_origin_test_resolves_in_worker_and_gateway(testbed):
    for ns in (testbed.worker, testbed.gateway):
        res = testbed.run_in(ns, ["getent", "hosts", "origin.test"])
        assert res.stdout.split()[:1] == [ORIGIN_IP], (ns, res.stdout, res.stderr)


def test_redirect_hands_worker_port_80_to_the_transparent_port_with_its_original_destination(
        testbed, origin, tollgates):
    tollgates.stop()  # free :15001 in the gateway; the next test that needs Tollgate restarts it
    listener = in_netns(testbed.gateway, lambda: socket.socket())
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", TRANSPARENT_PORT))
    listener.listen(1)
    listener.settimeout(5)
    try:
        client = testbed.connect(testbed.worker, (ORIGIN_IP, 80))
        conn, peer = listener.accept()
        raw = conn.getsockopt(socket.SOL_IP, 80, 16)  # SO_ORIGINAL_DST
        port = struct.unpack("!H", raw[2:4])[0]
        assert (socket.inet_ntoa(raw[4:8]), port) == (ORIGIN_IP, 80)
        assert peer[0] == WORKER_IP
        # Bytes flow both ways through the redirected connection.
        with RawClient(client) as c:
            c.send(request("GET", "/x", ORIGIN_IP))
            assert conn.recv(100).startswith(b"GET /x HTTP/1.1")
            conn.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")
            assert c.read_response().status == 204
        conn.close()
    finally:
        listener.close()
