"""kerassl: self-supervised image representation learning with few labels, in Keras 3."""

__version__ = "0.1.0"
