"""A byte-level tokenizer built in code: nothing to download, every string has an encoding.

Ids 0-255 are the UTF-8 bytes; three special ids follow. Instructions are padded (or cut) to a
fixed length so every request gives the same sequence length S, which keeps batching and the
energy head's context shape simple.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

PAD_ID = 256  # padding (never attended)
BOS_ID = 257  # start of the instruction
EOS_ID = 258  # end of the instruction (kept when the text is cut, so the model sees where it ends)
VOCAB_SIZE = 259


class ByteTokenizer:
    vocab_size = VOCAB_SIZE
    pad_id = PAD_ID

    def __init__(self, max_len: int) -> None:
        if max_len < 3:
            raise ValueError(f"max_len must be >= 3 (BOS, one byte, EOS), got {max_len}")
        self.max_len = max_len  # total ids per text, BOS and EOS included

    def encode(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """texts -> ids [B, max_len] long, valid [B, max_len] bool (False on padding).

        Longer texts keep their first max_len - 2 bytes.
        """
        ids = torch.full((len(texts), self.max_len), PAD_ID, dtype=torch.long)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"instruction {i} must be a str, got {type(text).__name__}")
            body = list(text.encode("utf-8"))[: self.max_len - 2]
            row = [BOS_ID, *body, EOS_ID]
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        return ids, ids != PAD_ID

    def decode(self, ids: torch.Tensor) -> str:
        """ids [T] -> text, special ids dropped."""
        return bytes(int(i) for i in ids.tolist() if i < 256).decode("utf-8", errors="replace")
