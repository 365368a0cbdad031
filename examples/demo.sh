#!/usr/bin/env bash
# The demo: pretrain the tiny preset on the built-in demo data, then use and look inside the
# result on demo validation images. Called by `make demo`; run it directly as
#   examples/demo.sh [RUN_DIR] [STEPS]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
OUT=${1:-runs/demo}
STEPS=${2:-600}

# --force: a rerun starts afresh (the previous run moves to $OUT.old-<date>-<time>).
"$BIN/detailclip" pretrain --preset tiny --steps "$STEPS" --seed 0 --out "$OUT" --force

# The first validation image of each class (the objects' pattern; their colours are random).
mapfile -t IMAGES < <("$BIN/python" -c "
from detailclip_cli.core.data import demo_root, is_image_file
val = demo_root() / 'val'
for c in ('striped', 'dotted', 'checkered', 'plain'):
    print(sorted(p for p in (val / c).iterdir() if is_image_file(p))[0])
")
LABELS="striped,dotted,checkered,plain"

echo "== zero-shot on one validation image per class (the run you just trained)"
"$BIN/detailclip" zero-shot "${IMAGES[@]}" --labels "$LABELS" --templates demo --top-k 3 --model "$OUT"
echo "== zero-shot accuracy on the whole validation split"
"$BIN/detailclip" zero-shot --eval demo --model "$OUT" --out "$OUT/zero-shot"
echo "== attention maps and the tokens they keep"
"$BIN/detailclip" attn-map "${IMAGES[@]}" --model "$OUT" --out "$OUT/attn-maps"
echo "== reconstructions from the kept tokens"
"$BIN/detailclip" reconstruct "${IMAGES[@]}" --model "$OUT" --out "$OUT/reconstructions"
echo
echo "Pictures: $OUT/attn-maps/, $OUT/reconstructions/, $OUT/zero-shot/confusion.png"
echo "Training curves: $BIN/detailclip plot $OUT --out $OUT/curves.png"
