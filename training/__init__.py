"""energy_rerank.training"""
