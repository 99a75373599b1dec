"""energy_rerank.kernels"""
