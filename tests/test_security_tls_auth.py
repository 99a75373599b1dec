"""Token auth and TLS end to end: the real server (`energy-rerank serve --tls-cert --tls-key`, token
from the environment) in a subprocess, with a self-signed certificate made in the test by the
openssl CLI, called by the real client. Also: loopback is the default bind everywhere.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from energy_rerank.server.cli import add_parser
from energy_rerank.server.config import ServerConfig
from energy_rerank.server.testing import TINY_CAMERA, TINY_LOWDIM, ServerProcess, write_tiny_bundles
from energy_rerank_client import RerankClient, RetryPolicy

TOKEN = "tls-token-7f3a"
NO_RETRY = RetryPolicy(attempts=1)
OBS = {"images": {TINY_CAMERA: np.zeros((32, 32, 3), np.uint8)}, "lowdim": np.zeros(TINY_LOWDIM, np.float32)}


def self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    """A throw-away CA-less certificate for 127.0.0.1 and localhost -> (cert.pem, key.pem)."""
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", f"/CN={name}",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    root = tmp_path_factory.mktemp("tls")
    cert, key = self_signed(root, "server")
    other, _ = self_signed(root, "impostor")
    policy_dir, energy_dir = write_tiny_bundles(root / "bundles")
    (root / "token").write_text(TOKEN + "\n")
    args = ["--policy", str(policy_dir), "--energy", str(energy_dir), "--tls-cert", str(cert),
            "--tls-key", str(key), "--token-file", str(root / "token"), "--log-level", "WARNING"]  # fmt: skip
    with ServerProcess(args) as srv:
        yield srv, cert.read_bytes(), other.read_bytes()


def test_tls_with_the_token_works(tls_server):
    srv, cert, _ = tls_server
    assert "TLS" in srv.output and "auth on" in srv.output
    with RerankClient(srv.address, token=TOKEN, root_certificates=cert, timeout=30) as c:
        r = c.select(**OBS, num_candidates=8, seed=0)
        assert np.isfinite(r.chunk).all() and r.energies.shape == (8,)
    # `localhost` is in the certificate too: hostname verification is on, not bypassed
    host_target = srv.address.replace("127.0.0.1", "localhost")
    with RerankClient(host_target, token=TOKEN, root_certificates=cert, timeout=30) as c:
        assert c.info().model_version


@pytest.mark.parametrize(("token", "message"), [(None, "missing"), ("wrong", "wrong bearer token"),
                                                (TOKEN + "x", "wrong bearer token")])  # fmt: skip
def test_tls_without_the_right_token_is_unauthenticated(tls_server, token, message):
    srv, cert, _ = tls_server
    with RerankClient(srv.address, token=token, root_certificates=cert, timeout=30, retry=NO_RETRY) as c:
        for call in (c.info, lambda: c.select(**OBS, num_candidates=4), lambda: c.reload_energy_head("")):
            with pytest.raises(grpc.RpcError) as e:
                call()
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED and message in e.value.details()


def test_plaintext_client_cannot_talk_to_a_tls_server(tls_server):
    srv, _, _ = tls_server
    with RerankClient(srv.address, token=TOKEN, timeout=5, retry=NO_RETRY) as c:
        with pytest.raises(grpc.RpcError) as e:
            c.info()
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE


def test_client_refuses_a_server_certificate_it_does_not_trust(tls_server):
    srv, _, impostor = tls_server
    with RerankClient(srv.address, token=TOKEN, root_certificates=impostor, timeout=5, retry=NO_RETRY) as c:
        with pytest.raises(grpc.RpcError) as e:
            c.info()  # the token is never sent: the handshake fails first
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE


def test_health_over_tls_needs_no_token(tls_server):
    srv, cert, _ = tls_server
    with grpc.secure_channel(srv.address, grpc.ssl_channel_credentials(cert)) as ch:
        status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=30).status
    assert status == health_pb2.HealthCheckResponse.SERVING


def test_loopback_is_the_default_bind():
    c = ServerConfig()
    assert c.address.startswith("127.0.0.1:") and c.metrics_address == "127.0.0.1"
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["serve"])
    assert args.address.startswith("127.0.0.1:") and args.metrics_address == "127.0.0.1"
    assert c.auth_token is None and c.tls_cert is None  # explicit opt-in, documented in --help


def test_tls_needs_both_halves():
    with pytest.raises(ValueError, match="both"):
        ServerConfig(tls_cert=Path("cert.pem"))
