"""Rollout IO: LIBERO robomimic-style HDF5 (read/write), openpi's LeRobot parquet and LeRobot v3
datasets (read)."""

from energy_rerank.rollouts.episode import Episode, RolloutFormatError
from energy_rerank.rollouts.hdf5 import iter_hdf5, read_file_attrs, read_hdf5, write_hdf5
from energy_rerank.rollouts.lerobot_v3 import is_lerobot_v3, read_lerobot_v3
from energy_rerank.rollouts.parquet import read_lerobot_parquet

__all__ = [
    "Episode",
    "RolloutFormatError",
    "iter_hdf5",
    "read_file_attrs",
    "read_hdf5",
    "is_lerobot_v3",
    "read_lerobot_parquet",
    "read_lerobot_v3",
    "write_hdf5",
]
