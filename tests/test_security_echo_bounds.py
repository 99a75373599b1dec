"""Error messages quote what the client sent within bounds: a 1 MiB dtype string, a 500,000-dim
shape, a 1 MiB camera name or bundle path come back as INVALID_ARGUMENT (or the call's own
status) naming the field, in a message under 1 KiB. Unbounded, such a message passed the
client's metadata limit (8 KiB) and the caller saw RESOURCE_EXHAUSTED "received metadata size
exceeds soft limit" instead of the field at fault. The real server in process, a real channel."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from energy_rerank.server.config import ServerConfig
from energy_rerank.server.models import load_reranker
from energy_rerank.server.testing import TINY_CAMERA, TINY_LOWDIM, InProcessServer, write_tiny_bundles
from energy_rerank_client._proto import rerank_pb2 as pb
from energy_rerank_client._proto import rerank_pb2_grpc

TOKEN = "echo-token"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
MIB = 1 << 20


@pytest.fixture(scope="module")
def stubs(tmp_path_factory):
    policy_dir, energy_dir = write_tiny_bundles(tmp_path_factory.mktemp("bundles"))
    reranker = load_reranker(ServerConfig(policy_path=policy_dir, energy_path=energy_dir, backend="torch"))
    config = ServerConfig(address="127.0.0.1:0", metrics_port=None, auth_token=TOKEN)
    with InProcessServer(reranker, config) as srv, grpc.insecure_channel(srv.address) as channel:
        yield rerank_pb2_grpc.RerankServiceStub(channel), rerank_pb2_grpc.RerankAdminStub(channel)


def observation() -> pb.Observation:
    obs = pb.Observation(lowdim=pb.Tensor(dtype="float32", shape=[TINY_LOWDIM], data=bytes(4 * TINY_LOWDIM)))
    obs.images[TINY_CAMERA].CopyFrom(
        pb.Image(encoding=pb.Image.RAW, data=bytes(32 * 32 * 3), height=32, width=32)
    )
    return obs


def refused(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as e:
        call(request, metadata=AUTH, timeout=30)
    return e.value


def test_a_1_mib_dtype_string_gets_invalid_argument_under_1_kib(stubs):
    select, _ = stubs
    obs = observation()
    obs.lowdim.dtype = "x" * MIB
    e = refused(select.SelectAction, pb.SelectActionRequest(observation=obs))
    print(f"\n{len(e.details())} chars: {e.details()}")
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
    assert e.details().startswith("observation.lowdim: dtype 'xxxx") and len(e.details().encode()) < 1024


def test_a_500000_dim_shape_gets_invalid_argument_under_1_kib(stubs):
    select, _ = stubs
    obs = observation()
    obs.lowdim.shape[:] = [1] * 500_000
    e = refused(select.SelectAction, pb.SelectActionRequest(observation=obs))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
    assert e.details().startswith("observation.lowdim: shape [1, 1,") and "500000 items" in e.details()
    assert len(e.details().encode()) < 1024


def test_score_candidates_dtype_and_shape_are_bounded_too(stubs):
    select, _ = stubs
    good = pb.ScoreCandidatesRequest(
        hidden=pb.Tensor(dtype="float32", shape=[1, 2, 64], data=bytes(512)),
        candidates=pb.Tensor(dtype="float32", shape=[1, 2, 8, 7], data=bytes(448)),
    )
    for field, value in (("dtype", "\N{SNOWMAN}" * MIB), ("shape", [7] * 300_000)):
        r = pb.ScoreCandidatesRequest()
        r.CopyFrom(good)
        if field == "dtype":
            r.candidates.dtype = value
        else:
            r.candidates.shape[:] = value
        e = refused(select.ScoreCandidates, r)
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and e.details().startswith(f"candidates: {field}")
        assert len(e.details().encode()) < 1024, len(e.details().encode())


def test_a_1_mib_camera_name_is_not_echoed(stubs):
    select, _ = stubs
    obs = observation()
    img = pb.Image()
    img.CopyFrom(obs.images[TINY_CAMERA])
    del obs.images[TINY_CAMERA]
    obs.images["c" * MIB].CopyFrom(img)  # the policy's camera is missing; this one it does not read
    e = refused(select.SelectAction, pb.SelectActionRequest(observation=obs))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
    assert e.details().startswith(f"observation.images: missing camera(s) [{TINY_CAMERA!r}]")
    assert len(e.details().encode()) < 1024
    obs.images[TINY_CAMERA].CopyFrom(
        pb.Image(encoding=pb.Image.PNG, data=b"\x89PNG\r\n\x1a\n" + b"\xff" * MIB)
    )
    e = refused(select.SelectAction, pb.SelectActionRequest(observation=obs))  # a corrupt image it reads
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
    assert e.details().startswith(f"observation.images[{TINY_CAMERA!r}]: cannot decode as PNG")
    assert len(e.details().encode()) < 1024
    del obs.images["c" * MIB]
    obs.images[TINY_CAMERA].CopyFrom(img)
    r = select.SelectAction(pb.SelectActionRequest(observation=obs), metadata=AUTH, timeout=30)
    assert np.isfinite(np.frombuffer(r.chunk.data, np.float32)).all()


def test_a_1_mib_bundle_path_is_bounded(stubs):
    _, admin = stubs
    e = refused(admin.ReloadEnergyHead, pb.ReloadEnergyHeadRequest(energy_path="/p" * (MIB // 2)))
    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION, e
    assert e.details().startswith("energy head bundle path") and len(e.details().encode()) < 1024
    e = refused(admin.ReloadEnergyHead, pb.ReloadEnergyHeadRequest(energy_path="/p" * 1000 + "\0"))
    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION and "unusable: ValueError" in e.details(), e
