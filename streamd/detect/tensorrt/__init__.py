"""The `tensorrt` detector backend, split by concept.

- `settings`: the YAML key, `TensorRTDetectorSettings`, the prebuilt-engine suffixes;
- `key`: `EngineKey`, what an engine depends on, and the field-by-field diff of two keys;
- `sidecar`: the JSON record next to every engine streamd builds (and the atomic write);
- `cache`: finding the engine for a key (or the nearest stale one) in the cache directory;
- `ultralytics`: the metadata header of an Ultralytics `.engine` export;
- `options`: builder settings per TensorRT version and precision, profile shapes;
- `progress`: build progress lines; `calibration`: INT8 calibration data and calibrator;
- `onnx_meta`: ONNX `metadata_props` read without the `onnx` package;
- `gpu`: TensorRT and CUDA imported on demand, CUDA memory and streams;
- `build`: `streamd engine build` and the startup lookup/build (`ensure_engine`);
- `runtime`: `TensorRTDetector`, the engine behind the `Detector` interface.

Everything but `gpu`, `build` and `runtime` is plain Python, tested on any machine; importing
this package imports neither TensorRT nor CUDA, creating the detector does.
"""

from __future__ import annotations

from streamd.detect.tensorrt.runtime import TensorRTDetector
from streamd.detect.tensorrt.settings import KEY, TensorRTDetectorSettings

__all__ = ["KEY", "TensorRTDetector", "TensorRTDetectorSettings"]
