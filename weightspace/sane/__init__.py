"""SANE (Schuerholt, Mahoney, Borth, ICML 2024): tokenized weights, a sequential autoencoder trained on windows,
model embeddings for property prediction, and sampling new models. One module per stage:

    tokenize    checkpoint <-> token sequence, mask, 3-part positions (Sec. 3.1)
    preprocess  filtering, per-layer standardisation, weight-matching alignment, permuted views (Sec. 3.2)
    model       the transformer autoencoder, NT-Xent and the masked reconstruction loss (Sec. 3.2-3.3)
    train       data preparation and pre-training on random windows (Sec. 3.3)
    embed       halo-padded whole-sequence encoding, model embeddings (Sec. 3.4)
    properties  ridge probes and the W / s(W) baselines (Sec. 4.1)
    sample      per-token KDE sampling, SANE_SUB, SANE_BOOT, weight-space KDE baseline (Sec. 4.2)
"""
from .embed import chunks, decode_sequence, embed, encode_sequence, reconstruction_loss
from .model import SANE, SANEConfig, masked_mse, nt_xent, sane_loss
from .preprocess import (ChainSpec, Standardizer, align, chain_spec, finite_checkpoints, permute,
                         random_permutations, weight_matching)
from .tokenize import Layout, TokenizeError, Tokens, detokenize, layout, positions, tokenize

__all__ = ["SANE", "SANEConfig", "ChainSpec", "Layout", "Standardizer", "TokenizeError", "Tokens", "align",
           "chain_spec", "chunks", "decode_sequence", "detokenize", "embed", "encode_sequence",
           "finite_checkpoints", "layout", "masked_mse", "nt_xent", "permute", "positions", "random_permutations",
           "reconstruction_loss", "sane_loss", "tokenize", "weight_matching"]
