"""energy-rerank: inference-time energy reranking of robot policy action chunks.

Import map (one step from import path to folder):
  energy_rerank.*           -> energy_rerank/   (core: config, energy, checkpoint, normalize, ...)
  energy_rerank.kernels     -> kernels/         (Triton kernels of the energy head + the Triton scorer)
  energy_rerank.training    -> training/        (datasets, feature cache, losses, trainer)
  energy_rerank.server      -> server/          (gRPC servicer, batcher, metrics)
The light client is its own distribution: clients/ -> energy_rerank_client.
"""

from energy_rerank.config import EnergyConfig
from energy_rerank.energy import EncodedContext, EnergyModel
from energy_rerank.normalize import ArrayStats, NormStats

__version__ = "0.1.0"
__all__ = ["ArrayStats", "EncodedContext", "EnergyConfig", "EnergyModel", "NormStats", "__version__"]
