"""Request decoding and validation: every bad input raises InvalidInput naming the field and
what was expected; good inputs round-trip exactly."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from energy_rerank.policy.base import PolicyDescription
from energy_rerank.server import codec, images
from energy_rerank.server._proto import rerank_pb2 as pb
from energy_rerank.server.errors import InvalidInput

ROOT = Path(__file__).resolve().parents[1]
DESC = PolicyDescription(
    name="t", hidden_size=16, chunk_len=4, action_dim=3, num_layers=2, cameras=("front",), lowdim_dim=5
)


def tensor(a: np.ndarray, **override) -> pb.Tensor:
    t = codec.encode_tensor(a)
    for k, v in override.items():
        if k == "shape":
            del t.shape[:]
            t.shape.extend(v)
        else:
            setattr(t, k, v)
    return t


def png(h: int = 6, w: int = 5, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.arange(h * w * 3, dtype=np.uint8).reshape(h, w, 3)).save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize("dtype", sorted(codec.WIRE_DTYPES))
def test_tensor_round_trip(dtype):
    a = (np.arange(12).reshape(3, 4) % 2).astype(dtype)
    b = codec.decode_tensor(codec.encode_tensor(a), "x", (dtype,), (3, None))
    assert b.dtype == a.dtype and np.array_equal(a, b) and b.flags.writeable


@pytest.mark.parametrize(
    ("t", "match"),
    [
        (tensor(np.zeros(5, np.float64)), r"lowdim: dtype 'float64', expected float32 \[5\]"),
        (tensor(np.zeros(4, np.float32)), r"lowdim: shape \[4\], expected float32 \[5\]"),
        (tensor(np.zeros((5, 1), np.float32)), r"lowdim: shape \[5, 1\]"),
        (
            tensor(np.zeros(5, np.float32), data=b"\0" * 12),
            r"lowdim: 12 data bytes, shape \[5\] float32 needs 20",
        ),
        (tensor(np.array([0, 1, np.nan, 0, 0], np.float32)), "lowdim: contains NaN or Inf"),
        (tensor(np.array([0, 1, np.inf, 0, 0], np.float32)), "lowdim: contains NaN or Inf"),
        (tensor(np.zeros(5, np.float32), dtype="object"), r"dtype 'object'"),
        (pb.Tensor(), r"dtype '\(unset\)'"),
    ],
)
def test_bad_tensors_name_field_and_expectation(t, match):
    with pytest.raises(InvalidInput, match=match):
        codec.decode_tensor(t, "lowdim", ("float32",), (5,))


def test_empty_dimension_rejected():
    with pytest.raises(InvalidInput, match=r"hidden: shape \[1, 0, 16\]"):
        codec.decode_tensor(
            tensor(np.zeros((1, 0, 16), np.float32)), "hidden", ("float32",), (None, None, 16)
        )


def test_images_png_jpeg_raw():
    assert images.decode_image(pb.Image(encoding=pb.Image.PNG, data=png()), "im").shape == (6, 5, 3)
    assert images.decode_image(pb.Image(encoding=pb.Image.JPEG, data=png(fmt="JPEG")), "im").shape == (6, 5, 3)
    raw = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    out = images.decode_image(pb.Image(encoding=pb.Image.RAW, data=raw.tobytes(), height=2, width=3), "im")
    assert np.array_equal(out, raw)
    gray = io.BytesIO()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(gray, format="PNG")
    assert images.decode_image(pb.Image(encoding=pb.Image.PNG, data=gray.getvalue()), "im").shape == (4, 4, 3)


@pytest.mark.parametrize(
    ("img", "match"),
    [
        (pb.Image(encoding=pb.Image.PNG, data=b"not a png"), r"images\['front'\]: cannot decode as PNG"),
        (pb.Image(encoding=pb.Image.JPEG, data=png()), "cannot decode as JPEG"),  # a PNG labelled JPEG
        (pb.Image(encoding=pb.Image.PNG, data=png()[:40]), "cannot decode as PNG"),  # truncated
        (pb.Image(encoding=pb.Image.PNG), "empty image data"),
        (pb.Image(data=png()), "encoding must be JPEG, PNG or RAW"),
        (
            pb.Image(encoding=pb.Image.RAW, data=b"\0" * 10, height=2, width=2),
            r"RAW 2x2x3 uint8 needs 12 bytes",
        ),
        (pb.Image(encoding=pb.Image.RAW, data=b"\0" * 12), "needs height and width"),
    ],
)
def test_bad_images(img, match):
    obs = pb.Observation(lowdim=tensor(np.zeros(5, np.float32)))
    obs.images["front"].CopyFrom(img)
    with pytest.raises(InvalidInput, match=match):
        codec.decode_observation(obs, DESC)


def test_observation_requirements():
    obs = pb.Observation(lowdim=tensor(np.ones(5, np.float32)), instruction="go")
    with pytest.raises(InvalidInput, match=r"observation.images: missing camera\(s\) \['front'\]"):
        codec.decode_observation(obs, DESC)
    obs.images["front"].CopyFrom(pb.Image(encoding=pb.Image.PNG, data=png()))
    o = codec.decode_observation(obs, DESC)
    assert o.instruction == "go" and o.lowdim.tolist() == [1.0] * 5 and o.state is None
    obs.ClearField("lowdim")
    with pytest.raises(InvalidInput, match=r"observation.lowdim: required, expected float32 \[5\]"):
        codec.decode_observation(obs, DESC)


def test_params_defaults_and_limits():
    p = codec.decode_params(pb.SelectParams(), default_n=64, max_n=128)
    assert (p.num_candidates, p.sigma_scale, p.seed, p.rule, p.temperature) == (64, 1.0, None, "argmin", 1.0)
    p = codec.decode_params(pb.SelectParams(num_candidates=3, sigma_scale=0.0, seed=7, rule=pb.SOFTMAX,
                                            temperature=0.5), 64, 128)  # fmt: skip
    assert (p.num_candidates, p.sigma_scale, p.seed, p.rule, p.temperature) == (3, 0.0, 7, "softmax", 0.5)
    for bad, match in [
        (pb.SelectParams(num_candidates=0), r"params.num_candidates: 0 is outside \[1, 128\]"),
        (pb.SelectParams(num_candidates=129), r"params.num_candidates: 129 is outside \[1, 128\]"),
        (pb.SelectParams(sigma_scale=float("nan")), "params.sigma_scale"),
        (pb.SelectParams(sigma_scale=-1.0), "params.sigma_scale"),
        (pb.SelectParams(temperature=-1.0), "params.temperature"),
        (pb.SelectParams(rule=7), "params.rule"),
    ]:
        with pytest.raises(InvalidInput, match=match):
            codec.decode_params(bad, 64, 128)


def test_score_request_validation():
    h = np.zeros((2, 3, 16), np.float32)
    c = np.zeros((2, 5, 4, 3), np.float32)
    req = pb.ScoreCandidatesRequest(hidden=tensor(h), candidates=tensor(c))
    hidden, valid, cands = codec.decode_score_request(req, DESC, max_n=8)
    assert tuple(hidden.shape) == (2, 3, 16) and bool(valid.all()) and tuple(cands.shape) == (2, 5, 4, 3)
    bad = [
        (dict(candidates=tensor(np.zeros((2, 9, 4, 3), np.float32))), "N = 9 candidates exceeds the limit 8"),
        (dict(candidates=tensor(np.zeros((2, 0, 4, 3), np.float32))), r"candidates: shape \[2, 0, 4, 3\]"),
        (dict(candidates=tensor(np.zeros((1, 5, 4, 3), np.float32))), r"expected float32 \[2, \?, 4, 3\]"),
        (
            dict(hidden=tensor(np.zeros((2, 3, 8), np.float32))),
            r"hidden: shape \[2, 3, 8\], expected float32\|float16",
        ),
        (dict(valid=tensor(np.zeros((2, 3), bool))), "at least one valid"),
        (dict(valid=tensor(np.ones((2, 3), np.uint8))), "valid: dtype 'uint8', expected bool"),
    ]
    for fields, match in bad:
        r = pb.ScoreCandidatesRequest(hidden=tensor(h), candidates=tensor(c))
        for k, v in fields.items():
            getattr(r, k).CopyFrom(v)
        with pytest.raises(InvalidInput, match=match):
            codec.decode_score_request(r, DESC, max_n=8)


def test_committed_stubs_match_a_fresh_generation(tmp_path):
    subprocess.run(
        ["bash", str(ROOT / "scripts" / "gen_proto.sh"), str(tmp_path)], check=True, capture_output=True
    )
    for dest in ("clients/energy_rerank_client/_proto", "server/_proto"):
        fresh = sorted(p.name for p in (tmp_path / dest).iterdir())
        assert fresh == sorted(p.name for p in (ROOT / dest).iterdir() if p.suffix in (".py", ".pyi")), dest
        for name in fresh:
            assert (tmp_path / dest / name).read_text() == (ROOT / dest / name).read_text(), (
                f"{dest}/{name} is stale: run scripts/gen_proto.sh"
            )
