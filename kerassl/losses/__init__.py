"""Self-supervised losses: one module per loss, a pure function plus a `keras.losses.Loss`."""

from kerassl.losses.barlow_twins import (
    BarlowTwinsLoss,
    barlow_twins,
    barlow_twins_from_correlation,
    batch_moments,
    cross_correlation,
    cross_correlation_from_moments,
)
from kerassl.losses.info_nce import InfoNCE, info_nce
from kerassl.losses.nt_xent import NTXent, nt_xent

__all__ = [
    "BarlowTwinsLoss",
    "InfoNCE",
    "NTXent",
    "barlow_twins",
    "barlow_twins_from_correlation",
    "batch_moments",
    "cross_correlation",
    "cross_correlation_from_moments",
    "info_nce",
    "nt_xent",
]
