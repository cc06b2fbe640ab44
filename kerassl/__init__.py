"""kerassl: self-supervised image representation learning with few labels, in Keras 3."""

__version__ = "0.1.0"

import os as _os

# TensorFlow's C++ start-up chatter (CUDA probing, oneDNN notes) buries kerassl's output on
# CPU machines; users can still set TF_CPP_MIN_LOG_LEVEL themselves.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
