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
from kerassl.losses.negative_cosine import (
    BYOLLoss,
    SimSiamLoss,
    byol_loss,
    negative_cosine,
    simsiam_loss,
)
from kerassl.losses.nt_xent import NTXent, nt_xent
from kerassl.losses.vicreg import VICRegLoss, vicreg

__all__ = [
    "BYOLLoss",
    "BarlowTwinsLoss",
    "InfoNCE",
    "NTXent",
    "SimSiamLoss",
    "VICRegLoss",
    "barlow_twins",
    "barlow_twins_from_correlation",
    "batch_moments",
    "byol_loss",
    "cross_correlation",
    "cross_correlation_from_moments",
    "info_nce",
    "negative_cosine",
    "nt_xent",
    "simsiam_loss",
    "vicreg",
]
