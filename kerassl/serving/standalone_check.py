"""Runs an exported SavedModel with TensorFlow alone; started by `verify.py` in a fresh process.

This file must import nothing from kerassl: it runs as
`python -I standalone_check.py EXPORT_DIR INPUT_DIR OUTPUT_NPZ`, removes the repository
from `sys.path` and refuses any `kerassl` import, so a SavedModel that secretly needed
kerassl code (custom objects, Python-side preprocessing) fails here.

INPUT_DIR holds `images.npy` (uint8 [N, H, W, C]) and `NNN.png` files of the same images.
It writes every signature's outputs to OUTPUT_NPZ (keys `<signature>/<output>`) and prints
one JSON line describing the signatures.
"""

import importlib.abc
import json
import os
import sys


class _RefuseKerassl(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname == "kerassl" or fullname.startswith("kerassl."):
            raise ImportError(f"{fullname} is blocked: the SavedModel must not need kerassl")
        return None


def _isolate() -> None:
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.path[:] = [
        entry for entry in sys.path if entry not in ("", ".") and os.path.abspath(entry) != repo
    ]
    sys.meta_path.insert(0, _RefuseKerassl())


def _describe(function) -> dict:
    inputs = function.structured_input_signature[1]
    outputs = function.structured_outputs
    return {
        "inputs": {k: [v.dtype.name, v.shape.as_list()] for k, v in sorted(inputs.items())},
        "outputs": {k: [v.dtype.name, v.shape.as_list()] for k, v in sorted(outputs.items())},
    }


def main(argv) -> int:
    _isolate()
    export_dir, input_dir, output_path = argv
    import numpy as np
    import tensorflow as tf

    images = np.load(os.path.join(input_dir, "images.npy"))
    png = []
    for index in range(len(images)):
        with open(os.path.join(input_dir, f"{index:03d}.png"), "rb") as file:
            png.append(file.read())

    loaded = tf.saved_model.load(export_dir)
    signatures = {name: _describe(fn) for name, fn in loaded.signatures.items()}
    results = {}
    for name, function in loaded.signatures.items():
        inputs = function.structured_input_signature[1]
        if set(inputs) == {"image_bytes"}:
            outputs = function(image_bytes=tf.constant(png))
        elif set(inputs) == {"images"}:
            outputs = function(images=tf.constant(images, dtype=inputs["images"].dtype))
        else:
            continue
        for key, value in outputs.items():
            value = value.numpy()
            if value.dtype == object:
                value = np.vectorize(lambda b: b.decode("utf-8"), otypes=[str])(value)
            results[f"{name}/{key}"] = value
    np.savez(output_path, **results)

    try:
        import kerassl  # noqa: F401
    except ImportError:
        kerassl_importable = False
    else:
        kerassl_importable = True
    loaded_modules = sorted(m for m in sys.modules if m.split(".")[0] == "kerassl")
    print(
        json.dumps(
            {
                "signatures": signatures,
                "kerassl_importable": kerassl_importable,
                "kerassl_modules_loaded": loaded_modules,
                "tensorflow_version": tf.__version__,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
