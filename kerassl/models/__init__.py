"""Encoders, heads and methods. Importing this package registers kerassl's Keras objects."""

from kerassl.models import encoders, heads  # noqa: F401  (registers custom layers)
