"""Hostile input: property-based fuzzing of SelectAction and ScoreCandidates with hypothesis.

Random dtypes (also ones the contract does not know), shapes (empty, negative, huge), byte
lengths that disagree with the shape, NaN/Inf/subnormal values, truncated and corrupt images,
decompression bombs, out-of-range parameters. Every answer must be a well-formed status: OK
with a finite in-bounds chunk (or energies of the right shape), or a deliberate error code with
a message. UNKNOWN would mean an unhandled exception and INTERNAL one or a policy overflow
blamed on the policy instead of the input, so they fail the test. Afterwards
the server is healthy, a good request succeeds, and the process's memory has not grown
unboundedly.

The real server runs in process (same code, real loopback channel) so >= 2000 examples fit in
CI time; the server's memory is this process's resident set.
"""

from __future__ import annotations

import collections
import gc
import io
import math
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image as PILImage

from energy_rerank.server.config import ServerConfig
from energy_rerank.server.models import load_reranker
from energy_rerank.server.testing import TINY_CAMERA, TINY_LOWDIM, InProcessServer, write_tiny_bundles
from energy_rerank_client._proto import rerank_pb2 as pb
from energy_rerank_client._proto import rerank_pb2_grpc

EXAMPLES = 1100  # per RPC: >= 2000 in all
MAX_N = 32  # keeps requests that pass validation cheap
MAX_MESSAGE = 1 << 20
RSS_GROWTH_LIMIT = 200 * 2**20  # bytes; a leak of even 100 KB per request would blow it
ALLOWED_ERRORS = {"INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"}
WIRE_DTYPES = ("float32", "float16", "float64", "int32", "int64", "uint8", "bool")
JUNK_DTYPES = ("", "object", "O", "V8", "<f4", "float8", "complex64", "str", "float32\x00", "x" * 300)


# ------------------------------------------------------------------ strategies
def _encoded(mode: str, size: tuple[int, int], fmt: str) -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    img = PILImage.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)
    img.save(buf, format=fmt)
    return buf.getvalue()


def _bomb() -> bytes:
    """A PNG declaring 5000 x 5000 pixels in a few KB: must be refused before decoding."""
    buf = io.BytesIO()
    PILImage.new("L", (5000, 5000)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


GOOD_IMAGES = {
    "png": _encoded("RGB", (32, 32), "PNG"),
    "png-gray": _encoded("L", (7, 3), "PNG"),
    "png-rgba": _encoded("RGBA", (1, 1), "PNG"),
    "png-strip": _encoded("RGB", (2000, 1), "PNG"),
    "jpeg": _encoded("RGB", (32, 32), "JPEG"),
    "jpeg-cmyk": _encoded("CMYK", (16, 8), "JPEG"),
}
BOMB = _bomb()

finite32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
any32 = st.floats(width=32)  # NaN, +-Inf, subnormals, +-3.4e38
dims = st.one_of(
    st.integers(0, 6),
    st.sampled_from([-1, -(2**63), 2**31, 2**32 + 1, 2**62, 2**63 - 1]),  # int64 on the wire
)


@st.composite
def tensors(draw, shape: tuple[int, ...], dtype: str = "float32") -> pb.Tensor:
    """Mostly near what the server expects (so some requests get through), often not."""
    how = draw(st.sampled_from(["exact", "exact", "values", "shape", "dtype", "bytes", "huge"]))
    if how in ("shape", "huge"):
        shape = tuple(draw(st.lists(dims if how == "huge" else st.integers(0, 6), max_size=6)))
    if how == "dtype":
        dtype = draw(st.sampled_from(WIRE_DTYPES + JUNK_DTYPES))
    t = pb.Tensor(dtype=dtype, shape=list(shape))
    count = math.prod(shape) if all(0 <= d <= 4096 for d in shape) else -1
    if how == "bytes" or dtype not in WIRE_DTYPES or not 0 <= count <= 100_000:
        t.data = draw(st.binary(max_size=512))
        return t
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))  # bulk values: cheap to draw
    if dtype.startswith("float"):
        a = rng.normal(size=count) * draw(st.sampled_from([0.0, 1e-3, 1.0, 1e3, 1e30]))
        for _ in range(draw(st.integers(0, 3)) if count else 0):  # a few chosen special values
            a[draw(st.integers(0, count - 1))] = draw(any32 if how == "values" else finite32)
        with np.errstate(over="ignore"):
            data = a.astype(dtype).tobytes()  # float16 overflows to Inf: also worth sending
    else:
        data = rng.integers(0, 256, count * np.dtype(dtype).itemsize, dtype=np.uint8).tobytes()
    cut = draw(st.sampled_from([0, 0, 0, 1, -1]))  # sometimes one byte short or long
    t.data = data[:-1] if cut == 1 and data else data + b"\0" if cut == -1 else data
    return t


@st.composite
def images(draw) -> pb.Image:
    kind = draw(st.sampled_from(["good", "good", "truncated", "raw", "random", "bomb", "wrong-encoding"]))
    encoding = {"jpeg": pb.Image.JPEG}
    if kind in ("good", "truncated", "wrong-encoding"):
        name = draw(st.sampled_from(sorted(GOOD_IMAGES)))
        data = GOOD_IMAGES[name]
        enc = encoding.get(name.split("-")[0], pb.Image.PNG)
        if kind == "truncated":
            data = data[: draw(st.integers(0, len(data) - 1))]
        if kind == "wrong-encoding":
            enc = draw(st.integers(0, 7))
        return pb.Image(encoding=enc, data=data)
    if kind == "bomb":
        return pb.Image(encoding=pb.Image.PNG, data=BOMB)
    if kind == "raw":
        h = draw(st.one_of(st.integers(0, 40), st.integers(0, 2**32 - 1)))
        w = draw(st.one_of(st.integers(0, 40), st.integers(0, 2**32 - 1)))
        exact = 0 < h * w * 3 <= 20_000 and draw(st.booleans())
        data = (
            draw(st.binary(min_size=h * w * 3, max_size=h * w * 3))
            if exact
            else draw(st.binary(max_size=600))
        )
        return pb.Image(encoding=pb.Image.RAW, data=data, height=h, width=w)
    return pb.Image(encoding=draw(st.integers(0, 7)), data=draw(st.binary(max_size=600)))


@st.composite
def select_requests(draw) -> pb.SelectActionRequest:
    """Most requests break one part and keep the rest valid, so the model runs often enough."""
    broken = draw(st.sampled_from(["nothing", "images", "lowdim", "params", "params", "everything"]))
    fuzz = {part: broken in (part, "everything") for part in ("images", "lowdim", "params")}
    obs = pb.Observation(instruction=draw(st.text(max_size=64)))
    if fuzz["images"]:
        cams = draw(st.lists(st.sampled_from([TINY_CAMERA, TINY_CAMERA, "wrist", "", "\0" * 3]), max_size=3))
        for cam in cams:
            obs.images[cam].CopyFrom(draw(images()))
    else:
        obs.images[TINY_CAMERA].CopyFrom(pb.Image(encoding=pb.Image.PNG, data=GOOD_IMAGES["png"]))
    if fuzz["lowdim"]:
        if draw(st.integers(0, 9)):  # usually sent
            obs.lowdim.CopyFrom(draw(tensors((TINY_LOWDIM,))))
        if draw(st.booleans()):
            obs.state.CopyFrom(draw(tensors((draw(st.integers(0, 9)),))))  # read by nobody here: ignored
    else:
        values = np.asarray(draw(st.lists(finite32, min_size=TINY_LOWDIM, max_size=TINY_LOWDIM)), np.float32)
        obs.lowdim.CopyFrom(pb.Tensor(dtype="float32", shape=[TINY_LOWDIM], data=values.tobytes()))
    params = pb.SelectParams(return_candidates=draw(st.booleans()))
    if fuzz["params"]:
        params.rule = draw(st.integers(0, 5))
        params.temperature = draw(st.one_of(any32, st.just(0.0), st.sampled_from([1e-45, 1e-30, 1e30])))
        if draw(st.booleans()):
            params.num_candidates = draw(st.one_of(st.integers(0, MAX_N + 2), st.integers(0, 2**32 - 1)))
        if draw(st.booleans()):
            params.sigma_scale = draw(any32)
    else:
        params.rule = draw(st.sampled_from([pb.ARGMIN, pb.SOFTMAX]))
        params.temperature = draw(st.floats(0.01, 100.0))
        params.num_candidates = draw(st.integers(1, MAX_N))
    if draw(st.booleans()):
        params.seed = draw(st.integers(0, 2**64 - 1))
    req = pb.SelectActionRequest(observation=obs)
    if broken == "nothing" or draw(st.integers(0, 9)):
        req.params.CopyFrom(params)
    return req


@st.composite
def score_requests(draw, hidden_size: int, chunk_len: int, action_dim: int) -> pb.ScoreCandidatesRequest:
    b, s, n = draw(st.integers(1, 3)), draw(st.integers(1, 6)), draw(st.integers(1, 5))
    req = pb.ScoreCandidatesRequest(
        hidden=draw(tensors((b, s, hidden_size), draw(st.sampled_from(["float32", "float16"])))),
        candidates=draw(tensors((b, n, chunk_len, action_dim))),
        normalized=draw(st.booleans()),
    )
    if draw(st.booleans()):
        req.valid.CopyFrom(draw(tensors((b, s), "bool")))
    return req


# ------------------------------------------------------------------ the server under test
def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory):
    policy_dir, energy_dir = write_tiny_bundles(tmp_path_factory.mktemp("bundles"))
    reranker = load_reranker(
        ServerConfig(
            policy_path=policy_dir,
            energy_path=energy_dir,
            backend="torch",
            max_candidates=MAX_N,
            default_candidates=8,
        )
    )
    config = ServerConfig(
        address="127.0.0.1:0", metrics_port=None, max_candidates=MAX_N, default_candidates=8,
        max_message_bytes=MAX_MESSAGE,
    )  # fmt: skip
    with InProcessServer(reranker, config) as srv, grpc.insecure_channel(srv.address) as channel:
        stub = rerank_pb2_grpc.RerankServiceStub(channel)
        info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30)
        yield srv, channel, stub, info


class Tally:
    def __init__(self) -> None:
        self.codes: collections.Counter[str] = collections.Counter()

    def call(self, method, request) -> object | None:
        try:
            response = method(request, timeout=60)
        except grpc.RpcError as e:
            code = e.code().name
            self.codes[code] += 1
            # No INTERNAL: a finite but absurd input the policy overflows on is the caller's
            # (INVALID_ARGUMENT naming it), and "internal error (...)" is an unhandled exception.
            assert code in ALLOWED_ERRORS, f"{code}: {e.details()}\nrequest: {str(request)[:2000]}"
            assert e.details(), f"{code} without a message"
            return None
        self.codes["OK"] += 1
        return response


def good_select(info) -> pb.SelectActionRequest:
    obs = pb.Observation()
    obs.images[TINY_CAMERA].CopyFrom(pb.Image(encoding=pb.Image.PNG, data=GOOD_IMAGES["png"]))
    obs.lowdim.CopyFrom(pb.Tensor(dtype="float32", shape=[info.lowdim_dim], data=bytes(4 * info.lowdim_dim)))
    return pb.SelectActionRequest(observation=obs, params=pb.SelectParams(num_candidates=8, seed=1))


def warm_up_and_measure_memory(stub, info) -> int:
    """Before fuzzing: good calls, so allocator pools and caches are already grown -> RSS in bytes."""
    for _ in range(100):
        stub.SelectAction(good_select(info), timeout=60)
    gc.collect()
    return rss_bytes()


def _fuzz_settings():
    return settings(
        max_examples=EXAMPLES, deadline=None, database=None, derandomize=True, print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                               HealthCheck.function_scoped_fixture, HealthCheck.large_base_example],
    )  # fmt: skip


def fuzz_select_action(stub, info) -> Tally:
    tally = Tally()
    t0 = time.perf_counter()

    @_fuzz_settings()
    @given(request=select_requests())
    def check(request):
        r = tally.call(stub.SelectAction, request)
        if r is None:
            return
        chunk = np.frombuffer(r.chunk.data, np.float32).reshape(tuple(r.chunk.shape))
        assert chunk.shape == (info.chunk_len, info.action_dim)
        assert np.isfinite(chunk).all()
        assert (chunk >= np.asarray(info.action_low, np.float32)).all()
        assert (chunk <= np.asarray(info.action_high, np.float32)).all()
        if not r.fallback:
            assert len(np.frombuffer(r.energies.data, np.float32)) >= 1

    check()
    print(f"\nSelectAction fuzz: {sum(tally.codes.values())} calls in {time.perf_counter() - t0:.1f} s: "
          f"{dict(tally.codes)}")  # fmt: skip
    assert sum(tally.codes.values()) >= EXAMPLES
    assert tally.codes["OK"] > 0 and tally.codes["INVALID_ARGUMENT"] > 0  # both sides were explored
    return tally


def fuzz_score_candidates(stub, info) -> Tally:
    tally = Tally()
    t0 = time.perf_counter()

    @_fuzz_settings()
    @given(request=score_requests(info.hidden_size, info.chunk_len, info.action_dim))
    def check(request):
        r = tally.call(stub.ScoreCandidates, request)
        if r is None:
            return
        b, n = request.candidates.shape[0], request.candidates.shape[1]
        energies = np.frombuffer(r.energies.data, np.float32).reshape(tuple(r.energies.shape))
        assert energies.shape == (b, n) and len(r.argmin) == b
        assert np.isfinite(energies).all(), "finite inputs must give finite energies or an error"

    check()
    print(f"\nScoreCandidates fuzz: {sum(tally.codes.values())} calls in {time.perf_counter() - t0:.1f} s: "
          f"{dict(tally.codes)}")  # fmt: skip
    assert sum(tally.codes.values()) >= EXAMPLES
    assert tally.codes["OK"] > 0 and tally.codes["INVALID_ARGUMENT"] > 0
    return tally


def test_fuzzed_server_stays_healthy_and_bounded(fuzzed):
    """SelectAction and ScoreCandidates fuzzed in turn on one server, memory measured around both:
    every answer is a documented status, and afterwards the server serves with bounded memory."""
    srv, channel, stub, info = fuzzed
    before = warm_up_and_measure_memory(stub, info)
    tallies = [fuzz_select_action(stub, info), fuzz_score_candidates(stub, info)]
    assert sum(sum(t.codes.values()) for t in tallies) >= 2000
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=30)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    r = stub.SelectAction(good_select(info), timeout=60)
    chunk = np.frombuffer(r.chunk.data, np.float32)
    assert np.isfinite(chunk).all() and not r.fallback
    assert srv.server.servicer.batcher.depth == 0
    gc.collect()
    growth = rss_bytes() - before
    print(f"\nresident memory: {before / 2**20:.0f} MiB before fuzzing, growth {growth / 2**20:+.1f} MiB")
    assert growth < RSS_GROWTH_LIMIT
