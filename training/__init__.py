"""energy_rerank.training: learning the energy head (and, in bc.py, the reference policy).

Where things are:
  optim            GuardedOptimizer: AdamW + warm-up + clipping + skip-and-count of bad steps
  losses           in-batch / explicit-negative InfoNCE, margin, mixed schedule, diversity, listwise
  cache            FeatureBatch and the safetensors feature cache (FeatureCache, write_feature_cache)
  policy_data      reference policy <-> trainer: windows, its L1 loss, live features, cache building
  batching         deterministic (seed, step) -> batch order, holdout split, per-rank slices
  checkpointing    atomic, pickle-free train-state checkpoints for exact resume
  monitor          console line + TensorBoard of loss, E_pos/E_neg, energy range, grad norm, ...
  distributed      torchrun process group, rank-0 writing, replica agreement check
  energy_trainer   EnergyTrainer: energy-only / joint / alternating / monitor-only
  config           TrainConfig and presets (debug, tiny-reference, default)
  cli              `energy-rerank train`, `energy-rerank cache-features`
  rerank_eval      held-out base / reranked / oracle best-of-N chunk L1
  synthetic_features, synthetic_pipeline   synthetic data for tests and the end-to-end demo
  bc, policy_cli   behaviour cloning of the reference policy (`energy-rerank train-policy`)
"""
