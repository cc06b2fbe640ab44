"""Data layer: dataset registry (`registry`) and one loader per file format (`formats`),
the image preprocessing shared with the exported model (`preprocess`), label-scarce splits
(`splits`), tf.data builders (`pipeline`), and augmentation: options and presets
(`presets`), image kernels (`image_ops`), the Keras layer (`augment`) and a PNG preview
(`preview`).

Import from the submodules; this package imports nothing itself, and neither `registry`
nor `presets` imports TensorFlow, so that the command lines can parse and check their
arguments before TensorFlow loads.
"""
