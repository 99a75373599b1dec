"""Policies that propose action chunks (kept light: importing this package loads no model code).

  base        Observation, PolicyDescription, Proposals, the Proposer protocol
  reference   ReferenceVLA + ReferenceConfig: the small OpenVLA-OFT-like reference policy
  hf_adapter  HFAdapter: a local transformers checkpoint + action head as a Proposer
  loading     load_policy(path): any policy bundle directory -> Proposer
  windows     Windows: (observation, expert chunk) training pairs
  tokenizer   ByteTokenizer; vision: PatchEncoder
"""
