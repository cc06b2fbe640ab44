"""Export runs as TF Serving SavedModels (`export`), verify them without kerassl (`verify`),
and serve them over the TF Serving REST API with a prediction page (`server`).

Submodules are imported on demand: importing `kerassl.serving` does not import TensorFlow.
"""
