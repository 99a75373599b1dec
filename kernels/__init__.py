"""energy_rerank.kernels: the Triton kernels of the energy head and the Triton scorer.

- the kernels and their launchers: fused_linear.py, fused_chain.py, row_stats.py,
  energy_attention.py, energy_readout.py, input_address.py;
- the scorer (triton_scorer.py), on weights prepared by folded_weights.py, and what it needs to
  know about the installed triton (triton_support.py).

Backend dispatch, CUDA graphs and the other backends live in energy_rerank.scoring; the GPU
acceptance run, compile report and timing in bench/. Importing this package needs neither
triton nor CUDA: triton is imported only by the kernel modules, which only the scorer imports.
"""
