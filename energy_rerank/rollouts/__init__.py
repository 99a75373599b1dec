"""Rollout IO: LIBERO robomimic-style HDF5 (read/write) and openpi's LeRobot parquet (read)."""

from energy_rerank.rollouts.episode import Episode, RolloutFormatError
from energy_rerank.rollouts.hdf5 import iter_hdf5, read_file_attrs, read_hdf5, write_hdf5
from energy_rerank.rollouts.parquet import read_lerobot_parquet

__all__ = [
    "Episode",
    "RolloutFormatError",
    "iter_hdf5",
    "read_file_attrs",
    "read_hdf5",
    "read_lerobot_parquet",
    "write_hdf5",
]
