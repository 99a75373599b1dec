"""Start-up warm-up: one blank request everywhere; on CUDA every graph bucket is captured too.

A (B, N) bucket first met by a robot's request would stall it for autotuning and capture
(measured on the H100: the first batched e2e run lost its 110 s budget to lazy buckets).
"""

from __future__ import annotations

import pytest
import torch

from energy_rerank.scoring.cuda_graphs import GraphedScorer
from energy_rerank.server.config import ServerConfig
from energy_rerank.server.models import load_reranker, warm_up
from energy_rerank.server.testing import write_tiny_bundles


def test_warm_up_on_cpu_runs_one_request(tmp_path):
    policy, energy = write_tiny_bundles(tmp_path)
    r = load_reranker(ServerConfig(policy_path=policy, energy_path=energy, backend="torch"))
    calls = []
    select = r.select
    r.select = lambda obs, params: calls.append((len(obs), params[0].num_candidates)) or select(obs, params)  # type: ignore[method-assign]
    warm_up(r, max_batch=8)
    assert calls == [(1, 8)]  # no graphs on the CPU: nothing else to capture


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_warm_up_captures_every_bucket_on_cuda(tmp_path):
    policy, energy = write_tiny_bundles(tmp_path)
    r = load_reranker(ServerConfig(policy_path=policy, energy_path=energy, device="cuda", max_candidates=64))
    graphed = r.scorer.impl
    assert isinstance(graphed, GraphedScorer)
    warm_up(r, max_batch=4)
    b = [x for x in graphed.b_buckets if x <= 4]
    n = [x for x in graphed.n_buckets if x <= 64]
    assert {k[:2] for k in graphed.graphs} >= {(x, y) for x in b for y in n if y > 1}
