"""Data layer: dataset registry (`sources`), label-scarce splits (`splits`), tf.data
builders (`pipeline`) and augmentation presets (`augment`).

Import from the submodules; this package imports nothing itself, so that the command lines
can parse arguments and read datasets before TensorFlow loads.
"""
