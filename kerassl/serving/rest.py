"""TensorFlow Serving's REST predict API as functions: JSON request → tensors → JSON reply.

Row (`{"instances": …}` → `{"predictions": …}`) and columnar (`{"inputs": …}` →
`{"outputs": …}`) formats, binary strings as `{"b64": "…"}`, and TF Serving's error form:
every client mistake is a `RestError` answered as `{"error": message}` with a 4xx status.
No HTTP here (`kerassl.serving.server`), no model loading (`kerassl.serving.repository`).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from typing import TYPE_CHECKING, Any

import numpy as np
import tensorflow as tf

from kerassl.serving import export as export_lib

if TYPE_CHECKING:
    from kerassl.serving.repository import ServableVersion

DEFAULT_MAX_IMAGE_PIXELS = 25_000_000


class RestError(Exception):
    """An error answered as `{"error": message}` with HTTP status `status`."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def parse_version(text: str) -> int:
    if not text.isdigit():
        raise RestError(400, f"Model version must be a non-negative integer, got {text!r}")
    return int(text)


# ---------------------------------------------------------------------------------------
# Predict: JSON → tensors → JSON, following TF Serving's REST encoding.


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"b64"}


def _nested_shape(value: Any, path: str) -> list[int]:
    """Shape of a rectangular nested list; 400 if ragged."""
    if isinstance(value, list):
        if not value:
            return [0]
        shapes = [_nested_shape(item, path) for item in value]
        if any(shape != shapes[0] for shape in shapes):
            raise RestError(400, f"{path}: nested lists have different lengths (ragged tensor)")
        return [len(value), *shapes[0]]
    return []


def _flatten(value: Any) -> list:
    if isinstance(value, list):
        return [leaf for item in value for leaf in _flatten(item)]
    return [value]


def _string_leaf(value: Any, name: str) -> bytes:
    if _is_b64(value):
        if not isinstance(value["b64"], str):
            raise RestError(400, f"{name}: 'b64' value must be a string")
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (binascii.Error, ValueError):
            raise RestError(400, f"{name}: 'b64' value is not valid base64") from None
    if isinstance(value, str):
        return value.encode("utf-8")
    raise RestError(
        400,
        f'{name}: expected a string or {{"b64": ...}} for a DT_STRING input, got '
        f"{type(value).__name__}",
    )


def to_tensor(value: Any, spec: tf.TensorSpec, name: str) -> tf.Tensor:
    """Converts a JSON value to a tensor matching `spec` (dtype, rank, fixed dims), else 400."""
    shape = _nested_shape(value, name)
    if spec.dtype == tf.string:
        leaves = [_string_leaf(leaf, name) for leaf in _flatten(value)]
        array = np.array(leaves, dtype=object).reshape(shape)
    else:
        leaves = _flatten(value)
        if any(isinstance(leaf, bool) or not isinstance(leaf, (int, float)) for leaf in leaves):
            raise RestError(400, f"{name}: expected numbers for a {spec.dtype.name} input")
        array = np.array(leaves, dtype=np.float64).reshape(shape)
        if spec.dtype.is_integer:
            if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
                raise RestError(400, f"{name}: expected integers for a {spec.dtype.name} input")
            if np.any(array < spec.dtype.min) or np.any(array > spec.dtype.max):
                raise RestError(
                    400,
                    f"{name}: values out of range [{spec.dtype.min}, {spec.dtype.max}] for "
                    f"{spec.dtype.name}",
                )
        array = array.astype(spec.dtype.as_numpy_dtype)
    expected = spec.shape
    if expected.rank is not None:
        compatible = len(shape) == expected.rank and all(
            want is None or want == got for want, got in zip(expected.as_list(), shape, strict=True)
        )
        if not compatible:
            wanted = [-1 if d is None else d for d in expected.as_list()]
            raise RestError(400, f"{name}: got shape {shape}, expected shape {wanted}")
    return tf.constant(array, dtype=spec.dtype)


def _check_image_sizes(tensor: tf.Tensor, name: str, max_pixels: int) -> None:
    """Rejects encoded images whose header declares more than `max_pixels` (decompression bombs)."""
    from PIL import Image, UnidentifiedImageError

    for data in tensor.numpy().reshape(-1):
        try:
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
            continue  # TensorFlow's decoder gives the error message
        if width * height > max_pixels:
            raise RestError(
                413, f"{name}: image of {width}x{height} pixels exceeds {max_pixels} pixels"
            )


def parse_predict_request(body: bytes, servable: ServableVersion):
    """Parses a predict body → `(signature_name, row_format, {input name: tensor})`, else 400."""
    try:
        request = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RestError(400, f"Request body is not valid JSON: {error}") from None
    if not isinstance(request, dict):
        raise RestError(400, "Request body must be a JSON object")
    signature_name = request.get("signature_name", export_lib.SERVING_DEFAULT)
    if not isinstance(signature_name, str):
        raise RestError(400, "'signature_name' must be a string")
    signatures = servable.signatures
    if signature_name not in signatures:
        raise RestError(
            400,
            f'Serving signature name: "{signature_name}" not found in signature def; '
            f"available: {sorted(signatures)}",
        )
    specs = signatures[signature_name].structured_input_signature[1]
    if ("instances" in request) == ("inputs" in request):
        raise RestError(
            400, "Request must have exactly one of 'instances' (row) or 'inputs' (columnar)"
        )
    row_format = "instances" in request
    if row_format:
        instances = request["instances"]
        if not isinstance(instances, list) or not instances:
            raise RestError(400, "'instances' must be a non-empty list")
        named = all(isinstance(i, dict) and not _is_b64(i) for i in instances)
        if named:
            for index, instance in enumerate(instances):
                if set(instance) != set(specs):
                    raise RestError(
                        400,
                        f"instances[{index}] has inputs {sorted(instance)}, "
                        f"expected {sorted(specs)}",
                    )
            columns = {key: [instance[key] for instance in instances] for key in specs}
        elif len(specs) == 1:
            columns = {next(iter(specs)): instances}
        else:
            raise RestError(400, f"each instance must be an object with inputs {sorted(specs)}")
    else:
        inputs = request["inputs"]
        if isinstance(inputs, dict) and not _is_b64(inputs):
            if set(inputs) != set(specs):
                raise RestError(400, f"'inputs' has {sorted(inputs)}, expected {sorted(specs)}")
            columns = inputs
        elif len(specs) == 1:
            columns = {next(iter(specs)): inputs}
        else:
            raise RestError(400, f"'inputs' must be an object with inputs {sorted(specs)}")
    tensors = {key: to_tensor(columns[key], specs[key], key) for key in specs}
    return signature_name, row_format, tensors


def _json_value(array: np.ndarray, name: str):
    if array.dtype == object:
        binary = name.endswith("_bytes")

        def encode(value: bytes):
            if not binary:
                try:
                    return value.decode("utf-8")
                except UnicodeDecodeError:
                    pass
            return {"b64": base64.b64encode(value).decode("ascii")}

        return np.vectorize(encode, otypes=[object])(array).tolist() if array.size else []
    return array.tolist()


def format_predict_response(outputs: dict, row_format: bool) -> dict:
    """TF Serving's response: `predictions` (rows) or `outputs` (columns); one output unnamed."""
    arrays = {key: np.asarray(value) for key, value in outputs.items()}
    if len(arrays) == 1:
        ((key, array),) = arrays.items()
        return {"predictions" if row_format else "outputs": _json_value(array, key)}
    if not row_format:
        return {"outputs": {key: _json_value(array, key) for key, array in arrays.items()}}
    sizes = {array.shape[0] if array.ndim else None for array in arrays.values()}
    if len(sizes) != 1 or None in sizes:
        raise RestError(400, "outputs do not share a batch dimension; use the 'inputs' format")
    columns = {key: _json_value(array, key) for key, array in arrays.items()}
    return {
        "predictions": [
            {key: column[index] for key, column in columns.items()} for index in range(sizes.pop())
        ]
    }


def tf_error_message(error: tf.errors.OpError) -> str:
    """The user-facing line(s) of a TensorFlow op error, without graph-trace boilerplate."""
    noise = ("Graph execution error", "Detected at node", "<stack traces unavailable>")
    lines = [
        line.strip()
        for line in (error.message or str(error)).splitlines()
        if line.strip() and not line.strip().startswith(("[[", *noise))
    ]
    return " ".join(lines) or type(error).__name__


def predict(
    servable: ServableVersion, body: bytes, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
) -> dict:
    """Runs a TF Serving predict request body on a servable, returning the response JSON."""
    signature_name, row_format, tensors = parse_predict_request(body, servable)
    for key, tensor in tensors.items():
        if tensor.dtype == tf.string:
            _check_image_sizes(tensor, key, max_image_pixels)
    try:
        outputs = servable.signatures[signature_name](**tensors)
    except (tf.errors.InvalidArgumentError, tf.errors.OutOfRangeError) as error:
        raise RestError(400, tf_error_message(error)) from None
    return format_predict_response({k: v.numpy() for k, v in outputs.items()}, row_format)
