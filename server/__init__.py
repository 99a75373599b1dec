"""energy_rerank.server"""
