"""Wire <-> numpy/torch: tensors as {dtype, shape, bytes}, camera images, observations.

Everything that arrives is checked before it reaches the model: dtype, shape, byte length,
finiteness, image size and decodability (server/images.py). A failure raises `InvalidInput`
naming the field and what was expected, so the caller can fix the request without reading
server logs; what the caller sent is quoted within bounds (`errors.quote`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from energy_rerank.checkpoint import SwitchExpectation
from energy_rerank.normalize import NormStats
from energy_rerank.policy.base import Observation, PolicyDescription
from energy_rerank.policy.windows import observation_vector
from energy_rerank.reranker import Reranker, Selection, SelectParams
from energy_rerank.server._proto import rerank_pb2 as pb
from energy_rerank.server.errors import InvalidInput, quote
from energy_rerank.server.images import DEFAULT_REQUEST_PIXELS, decode_cameras

# The only dtypes accepted on the wire, by their numpy names (little-endian, as sent).
WIRE_DTYPES = {
    name: np.dtype(name).newbyteorder("<")
    for name in ("float32", "float16", "float64", "int32", "int64", "uint8", "bool")
}
# A finite input this many standard deviations (of the policy's training data) from its mean is
# blamed when the policy's chunk comes out non-finite: the caller sent what the policy overflows on.
FAR_OUT_STDS = 1e3


# ------------------------------------------------------------------ tensors
def decode_tensor(
    t: pb.Tensor,
    field: str,
    dtypes: Sequence[str],
    shape: Sequence[int | None],
    finite: bool = True,
) -> np.ndarray:
    """Tensor message -> numpy array of one of `dtypes` and `shape` (None = any size >= 1)."""
    want = f"{'|'.join(dtypes)} [{', '.join('?' if d is None else str(d) for d in shape)}]"
    if t.dtype not in dtypes:
        raise InvalidInput(field, f"dtype {quote(t.dtype or '(unset)')}, expected {want}")
    got = tuple(int(d) for d in t.shape)
    if len(got) != len(shape) or any(
        d < 1 or (w is not None and d != w) for d, w in zip(got, shape, strict=True)
    ):
        raise InvalidInput(field, f"shape {quote(got)}, expected {want}")
    dt = WIRE_DTYPES[t.dtype]
    nbytes = math.prod(got) * dt.itemsize
    if len(t.data) != nbytes:
        raise InvalidInput(field, f"{len(t.data)} data bytes, shape {quote(got)} {t.dtype} needs {nbytes}")
    a = np.frombuffer(t.data, dtype=dt).reshape(got).copy()  # writable, owns its memory
    if finite and a.dtype.kind == "f" and not np.isfinite(a).all():
        raise InvalidInput(field, "contains NaN or Inf")
    return a


def encode_tensor(a: np.ndarray | torch.Tensor) -> pb.Tensor:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    a = np.ascontiguousarray(a)
    if a.dtype.name not in WIRE_DTYPES:
        raise TypeError(f"cannot send dtype {a.dtype} (allowed: {sorted(WIRE_DTYPES)})")
    a = a.astype(WIRE_DTYPES[a.dtype.name], copy=False)
    return pb.Tensor(dtype=a.dtype.name, shape=list(a.shape), data=a.tobytes())


# ------------------------------------------------------------------ observations
def decode_observation(
    obs: pb.Observation,
    desc: PolicyDescription,
    field: str = "observation",
    max_pixels: int = DEFAULT_REQUEST_PIXELS,
) -> Observation:
    """Validate an observation against what the served policy reads; images of cameras it does
    not read are ignored (never decoded), and those it reads must fit `max_pixels` together."""
    state = _vector(obs, "state", desc.state_dim, field)
    lowdim = _vector(obs, "lowdim", desc.lowdim_dim, field)
    images = decode_cameras(obs.images, desc.cameras, f"{field}.images", max_pixels)
    return Observation(images=images, state=state, lowdim=lowdim, instruction=obs.instruction)


def _vector(obs: pb.Observation, name: str, dim: int, field: str) -> np.ndarray | None:
    if dim == 0:
        return None  # the policy does not read it; anything sent is ignored
    if not obs.HasField(name):
        raise InvalidInput(f"{field}.{name}", f"required, expected float32 [{dim}]")
    return decode_tensor(getattr(obs, name), f"{field}.{name}", ("float32",), (dim,))


def far_out_input(
    obs: Observation, desc: PolicyDescription, stats: NormStats | None, field: str = "observation"
) -> InvalidInput | None:
    """When the policy's chunk came out non-finite from finite inputs: the lowdim/state element
    farthest from the policy's training data, if more than FAR_OUT_STDS standard deviations out
    (in raw magnitude without statistics), as the error to answer; None: the policy is to blame."""
    if not (desc.lowdim_dim or desc.state_dim):
        return None
    x = observation_vector(obs, desc.lowdim_dim > 0, desc.state_dim > 0).astype(np.float64)  # [lowdim, state]
    st = stats.state if stats is not None else None
    if st is not None and st.dim == x.size:
        far = np.abs(x - np.asarray(st.mean)) / np.maximum(np.asarray(st.std), 1e-6)
        unit = "standard deviations from the policy's training data"
    else:
        far, unit = np.abs(x), "in magnitude"
    i = int(np.argmax(far))
    if not far[i] > FAR_OUT_STDS:
        return None
    name, j = ("lowdim", i) if i < desc.lowdim_dim else ("state", i - desc.lowdim_dim)
    return InvalidInput(
        f"{field}.{name}[{j}]",
        f"{x[i]:.6g} is {far[i]:.3g} {unit}; the policy overflows on it (its chunk came out non-finite)",
    )


# ------------------------------------------------------------------ parameters and answers
RULES = {pb.SELECTION_RULE_UNSPECIFIED: "argmin", pb.ARGMIN: "argmin", pb.SOFTMAX: "softmax"}


def decode_params(p: pb.SelectParams, default_n: int, max_n: int, field: str = "params") -> SelectParams:
    n = int(p.num_candidates) if p.HasField("num_candidates") else default_n
    if not 1 <= n <= max_n:
        raise InvalidInput(f"{field}.num_candidates", f"{n} is outside [1, {max_n}]")
    sigma = float(p.sigma_scale) if p.HasField("sigma_scale") else 1.0
    if not (math.isfinite(sigma) and sigma >= 0):
        raise InvalidInput(f"{field}.sigma_scale", f"{sigma} must be finite and >= 0")
    if p.rule not in RULES:
        raise InvalidInput(f"{field}.rule", f"unknown value {p.rule}; expected ARGMIN or SOFTMAX")
    temperature = float(p.temperature) or 1.0
    if not (math.isfinite(temperature) and temperature > 0):
        raise InvalidInput(f"{field}.temperature", f"{temperature} must be finite and > 0")
    margin = float(p.switch_margin) if p.HasField("switch_margin") else None
    if margin is not None and not margin >= 0:  # NaN fails too
        raise InvalidInput(f"{field}.switch_margin", f"{margin} must be >= 0 (inf = never switch)")
    return SelectParams(
        num_candidates=n,
        sigma_scale=sigma,
        seed=int(p.seed) % 2**63 if p.HasField("seed") else None,  # torch seeds are int64
        rule=RULES[p.rule],  # type: ignore[arg-type]
        temperature=temperature,
        return_candidates=bool(p.return_candidates),
        switch_margin=margin,
    )


def encode_selection(
    s: Selection, model_version: str, timing: dict[str, float], batch_size: int
) -> pb.SelectActionResponse:
    return pb.SelectActionResponse(
        chunk=encode_tensor(s.chunk),
        index=s.index,
        energies=encode_tensor(np.asarray(s.energies, np.float32)),
        candidates=encode_tensor(s.candidates) if s.candidates is not None else None,
        fallback=s.fallback,
        fallback_reason=s.fallback_reason,
        model_version=model_version,
        timing=encode_timing(timing),
        batch_size=batch_size,
    )


def encode_timing(seconds: dict[str, float]) -> pb.Timing:
    return pb.Timing(**{f"{stage}_seconds": v for stage, v in seconds.items()})


def decode_score_request(
    r: pb.ScoreCandidatesRequest, desc: PolicyDescription, max_n: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> hidden [B, S, D] float32, valid [B, S] bool, candidates [B, N, H, A] float32."""
    hidden = decode_tensor(r.hidden, "hidden", ("float32", "float16"), (None, None, desc.hidden_size))
    b, s, _ = hidden.shape
    if r.HasField("valid"):
        valid = decode_tensor(r.valid, "valid", ("bool",), (b, s))
        if not valid.any(axis=1).all():
            raise InvalidInput("valid", "every context needs at least one valid (True) token")
    else:
        valid = np.ones((b, s), dtype=bool)
    cands = decode_tensor(
        r.candidates, "candidates", ("float32",), (b, None, desc.chunk_len, desc.action_dim)
    )
    if cands.shape[1] > max_n:
        raise InvalidInput("candidates", f"N = {cands.shape[1]} candidates exceeds the limit {max_n}")
    return torch.from_numpy(hidden).float(), torch.from_numpy(valid), torch.from_numpy(cands)


def encode_energies(energies: np.ndarray) -> pb.Tensor:
    """ScoreCandidates' answer [B, N]. Non-finite energies are refused, not sent: a caller taking
    the argmin would pick the NaN (numpy's argmin returns it). Finite inputs get here only with
    values far outside what the head was trained on (e.g. 1e30), so the inputs are named."""
    if not np.isfinite(energies).all():
        raise InvalidInput(
            "hidden|candidates",
            "the energy head produced non-finite energies for these inputs; values are far outside "
            "the range it was trained on (normalised actions are about [-1, 1])",
        )
    return encode_tensor(energies)


def encode_model_info(
    r: Reranker, default_candidates: int, max_batch: int, switch_rates: SwitchExpectation | None = None
) -> pb.ModelInfo:
    d = r.proposer.description
    h, w = d.image_size or (0, 0)
    return pb.ModelInfo(
        model_version=r.model_version,
        policy_name=d.name,
        chunk_len=d.chunk_len,
        action_dim=d.action_dim,
        hidden_size=d.hidden_size,
        num_layers=d.num_layers,
        action_low=r.low.tolist(),
        action_high=r.high.tolist(),
        cameras=list(d.cameras),
        image_height=h,
        image_width=w,
        state_dim=d.state_dim,
        lowdim_dim=d.lowdim_dim,
        gripper_dims=list(d.gripper_dims),
        max_candidates=r.max_candidates,
        default_candidates=default_candidates,
        scorer_backend=r.scorer.name,
        max_batch=max_batch,
        switch_margin=r.switch_margin,
        sampler_sigmas=list(r.sampler.config.sigmas),
        gripper_mode=r.sampler.config.gripper_mode,
        calibrated_switch_n=list(switch_rates.ns) if switch_rates else [],
        calibrated_switch_rate=list(switch_rates.rates) if switch_rates else [],
    )
