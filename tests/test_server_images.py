"""Camera images off the wire: sizes read from headers before any decoding, only the policy's
cameras decoded, the per-request budget, and the server-wide budget of pixels in flight (the
real server in process with a slowed policy, over a real channel)."""

from __future__ import annotations

import io
import threading
import time

import grpc
import numpy as np
import pytest
from PIL import Image

from energy_rerank.candidates import CandidateSampler
from energy_rerank.energy import EnergyModel
from energy_rerank.policy.base import PolicyDescription
from energy_rerank.policy.reference import ReferenceVLA
from energy_rerank.reranker import Reranker
from energy_rerank.scoring import TorchScorer
from energy_rerank.server import codec, images
from energy_rerank.server._proto import rerank_pb2 as pb
from energy_rerank.server.config import ServerConfig
from energy_rerank.server.errors import InvalidInput, Overloaded
from energy_rerank.server.testing import TINY_CAMERA, TINY_LOWDIM, InProcessServer, write_tiny_bundles
from energy_rerank_client._proto import rerank_pb2 as client_pb
from energy_rerank_client._proto import rerank_pb2_grpc

DESC = PolicyDescription(
    name="t",
    hidden_size=16,
    chunk_len=4,
    action_dim=3,
    num_layers=2,
    cameras=("front", "wrist"),
    lowdim_dim=2,
)


def png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h)).save(buf, format="PNG")
    return buf.getvalue()


def observation(**cams: pb.Image) -> pb.Observation:
    obs = pb.Observation(lowdim=codec.encode_tensor(np.zeros(2, np.float32)))
    for name, img in cams.items():
        obs.images[name].CopyFrom(img)
    return obs


def test_sizes_come_from_headers_and_a_bomb_is_refused_before_decoding():
    bomb = pb.Image(encoding=pb.Image.PNG, data=png(5000, 5000))
    assert images.image_pixels(pb.Image(encoding=pb.Image.PNG, data=png(7, 3)), "im") == 21
    assert images.image_pixels(pb.Image(encoding=pb.Image.RAW, data=bytes(12), height=2, width=2), "im") == 4
    t0 = time.perf_counter()
    with pytest.raises(InvalidInput, match=r"im: 5000x5000 exceeds 16777216 pixels"):
        images.decode_image(bomb, "im")
    assert time.perf_counter() - t0 < 0.05  # decoding 25 M pixels would take far longer


def test_only_the_policys_cameras_are_decoded():
    junk = pb.Image(encoding=pb.Image.JPEG, data=b"\xff\xd8 not a jpeg")
    small = pb.Image(encoding=pb.Image.PNG, data=png(4, 4))
    obs = observation(front=small, wrist=small, other=junk, empty=pb.Image())
    o = codec.decode_observation(obs, DESC)
    assert sorted(o.images) == ["front", "wrist"] and o.images["front"].shape == (4, 4, 3)
    obs.images["wrist"].CopyFrom(junk)  # a camera it reads: decoded, so refused
    with pytest.raises(InvalidInput, match=r"observation.images\['wrist'\]: cannot decode as JPEG"):
        codec.decode_observation(obs, DESC)


def test_the_request_budget_covers_the_cameras_read_together():
    obs = observation(
        front=pb.Image(encoding=pb.Image.PNG, data=png(100, 100)),
        wrist=pb.Image(encoding=pb.Image.PNG, data=png(100, 50)),
        other=pb.Image(encoding=pb.Image.PNG, data=png(4000, 4000)),  # not read: not counted
    )
    assert images.cameras_to_decode(obs.images, DESC.cameras, "observation.images", 15_000) == {
        "front": 10_000,
        "wrist": 5_000,
    }
    assert codec.decode_observation(obs, DESC, max_pixels=15_000).images["wrist"].shape == (50, 100, 3)
    with pytest.raises(
        InvalidInput, match=r"observation.images: 15000 pixels .* exceed the per-request budget of 14999"
    ):
        codec.decode_observation(obs, DESC, max_pixels=14_999)


def test_pixel_budget_holds_and_releases():
    budget = images.PixelBudget(100)
    with budget.hold(60):
        with pytest.raises(Overloaded, match="60 pixels of other requests"):
            with budget.hold(41):
                pass
        with budget.hold(40):
            assert budget.held == 100
        with budget.hold(0):  # no images: never refused
            pass
    assert budget.held == 0
    with pytest.raises(RuntimeError), budget.hold(100):
        raise RuntimeError("a failing request gives its pixels back too")
    assert budget.held == 0


class SlowPolicy:
    """The tiny reference policy, 0.5 s slower per batch; `busy` is set while it runs."""

    def __init__(self, inner: ReferenceVLA) -> None:
        self.inner, self.description, self.stats = inner, inner.description, inner.stats
        self.busy = threading.Event()

    def propose(self, observations):
        self.busy.set()
        time.sleep(0.5)
        return self.inner.propose(observations)


def test_the_server_refuses_images_beyond_its_budget_in_flight(tmp_path):
    policy_dir, energy_dir = write_tiny_bundles(tmp_path)
    policy = ReferenceVLA.load(policy_dir)
    slow = SlowPolicy(policy)
    reranker = Reranker(
        slow, TorchScorer(EnergyModel.from_pretrained(energy_dir)), CandidateSampler.for_policy(policy)
    )
    side = 1000
    config = ServerConfig(
        address="127.0.0.1:0",
        metrics_port=None,
        max_request_pixels=side * side,
        max_decoded_pixels=side * side,
    )

    def request(w: int) -> client_pb.SelectActionRequest:
        obs = client_pb.Observation(
            lowdim=client_pb.Tensor(dtype="float32", shape=[TINY_LOWDIM], data=bytes(4 * TINY_LOWDIM))
        )
        obs.images[TINY_CAMERA].CopyFrom(client_pb.Image(encoding=client_pb.Image.PNG, data=png(w, side)))
        return client_pb.SelectActionRequest(observation=obs, params=client_pb.SelectParams(num_candidates=2))

    with InProcessServer(reranker, config) as srv, grpc.insecure_channel(srv.address) as channel:
        stub = rerank_pb2_grpc.RerankServiceStub(channel)
        first = stub.SelectAction.future(request(side), timeout=60)  # holds the whole budget
        assert slow.busy.wait(30)
        with pytest.raises(grpc.RpcError) as e:
            stub.SelectAction(request(10), timeout=60)
        assert srv.server.servicer.pixels.held == side * side
        first.result()
        assert srv.server.servicer.pixels.held == 0
        after = stub.SelectAction(request(10), timeout=60)  # given back once answered
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e.value
    assert e.value.details().startswith("observation.images: 1000000 pixels of other requests"), (
        e.value.details()
    )
    assert np.isfinite(np.frombuffer(after.chunk.data, np.float32)).all()


def test_pillow_blocks_are_large_enough_to_be_given_back():
    """Decoded 4096 x 4096 images go back to the system once freed (see images.PILLOW_BLOCK_BYTES)."""
    assert Image.core.get_block_size() == images.PILLOW_BLOCK_BYTES >= 4096 * 4096 * 4
