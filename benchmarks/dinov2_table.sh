#!/usr/bin/env bash
# Reproduce the DINOv2-S table of the README end to end: variants (a)-(d) on the four labelled
# clips in data/ (CamVid 0006R0 and 0016E5_15Hz, DAVIS 2016 car-shadow and blackswan).
#
#   bash benchmarks/dinov2_table.sh [OUT]        (OUT defaults to runs/dinov2_table)
#   SEEDS="0 1 2 3 4" bash benchmarks/dinov2_table.sh   (k-means seeds; default "0 1 2")
#
# Writes predictions to OUT/<variant>/seed<s>/<camvid|davis|davis_ff>/<clip>/, one eval JSON
# per (variant, seed, clip, protocol) to OUT/eval/ (or $EVAL_DIR), and prints the markdown
# table as mean ± std over the seeds (the ViT has no noise: only the k-means seed varies).
# Needs the DINOv2 extra (pip install 'zsvss[dinov2]'). About 15 min per seed on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"

OUT="${1:-runs/dinov2_table}"
EVAL="${EVAL_DIR:-$OUT/eval}"
SEEDS="${SEEDS:-0 1 2}"
mkdir -p "$EVAL"

# Chosen on one tuning clip per dataset (0016E5_15Hz, blackswan): see the README section.
COMMON=(--model dinov2-s --max-side 448 --window 14
        --set features.dinov2_layer=-1 --set features.normalisation=linf)
K_CAMVID=10
K_DAVIS=4

variant_args() {
  case "$1" in
    a) echo "--set context.propagation=per-frame-kmeans --set refine.enabled=false --upsample bilinear" ;;
    b) echo "--set refine.enabled=false --upsample bilinear" ;;
    c) echo "--upsample bilinear" ;;
    d) echo "--upsample bilateral" ;;
  esac
}

zsvss() { python -m zsvss_nb -q "$@"; }

for v in a b c d; do
  read -r -a VA <<< "$(variant_args "$v")"
  for s in $SEEDS; do
    O="$OUT/$v/seed$s"
    SA=(--set "context.seed=$s")
    zsvss dataset camvid data/camvid --out "$O/camvid" "${COMMON[@]}" --k "$K_CAMVID" \
      --ignore-index 11 "${VA[@]}" "${SA[@]}"
    zsvss dataset davis data/davis2016 --out "$O/davis" "${COMMON[@]}" --k "$K_DAVIS" \
      "${VA[@]}" "${SA[@]}"
    zsvss dataset davis data/davis2016 --out "$O/davis_ff" "${COMMON[@]}" --k "$K_DAVIS" \
      "${VA[@]}" "${SA[@]}" --first-frame-gt
    # a single clip's folder opens as a one-video dataset, so each clip is scored on its own
    for clip in 0006R0 0016E5_15Hz; do
      zsvss eval "$O/camvid" "data/camvid/$clip" --format camvid --ignore-index 11 \
        --protocol hungarian --json "$EVAL/${v}_${s}_${clip}_hungarian.json" > /dev/null
    done
    for clip in car-shadow blackswan; do
      zsvss eval "$O/davis" "data/davis2016/$clip" --format davis \
        --protocol hungarian --json "$EVAL/${v}_${s}_${clip}_hungarian.json" > /dev/null
      zsvss eval "$O/davis_ff" "data/davis2016/$clip" --format davis \
        --protocol first-frame --json "$EVAL/${v}_${s}_${clip}_first-frame.json" > /dev/null
    done
  done
done

python - "$OUT" "$EVAL" $SEEDS <<'EOF'
import json, sys
from pathlib import Path

import numpy as np

out, ev, seeds = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
names = {"a": "(a) per-frame k-means", "b": "(b) scene context (k-means + AR KNN)",
         "c": "(c) (b) + refinement", "d": "(d) (c) + joint-bilateral upsampling"}
clips = ["0006R0", "0016E5_15Hz", "car-shadow", "blackswan"]


def res(v, clip, proto, key):
    """[seeds] values of one metric (percent)."""
    vals = [json.loads((ev / f"{v}_{s}_{clip}_{proto}.json").read_text())[key] for s in seeds]
    return 100 * np.array([np.nan if x is None else x for x in vals], dtype=float)


def pm(x):
    return "n/a" if np.isnan(x).all() else f"{np.nanmean(x):.1f} ± {np.nanstd(x):.1f}"


print(f"mean ± std over {len(seeds)} k-means seeds ({' '.join(seeds)})\n")
print("| variant | 0006R0 mIoU-H | 0016E5 mIoU-H | car-shadow mIoU-H / FF "
      "| blackswan mIoU-H / FF | mean mVC8 (H, 4 clips) | mean mVC8 (FF, DAVIS) |")
print("|---|---|---|---|---|---|---|")
for v in "abcd":
    vc_h = np.mean([res(v, c, "hungarian", "mvc8") for c in clips], axis=0)
    vc_ff = np.mean([res(v, c, "first-frame", "mvc8") for c in clips[2:]], axis=0)
    h = {c: pm(res(v, c, "hungarian", "miou")) for c in clips}
    ff = {c: pm(res(v, c, "first-frame", "miou")) for c in clips[2:]}
    print(f"| {names[v]} | {h['0006R0']} | {h['0016E5_15Hz']} "
          f"| {h['car-shadow']} / {ff['car-shadow']} | {h['blackswan']} / {ff['blackswan']} "
          f"| {pm(vc_h)} | {pm(vc_ff)} |")

print("\nper-clip mVC8 (H; FF for DAVIS) and seconds per frame (all frames of all runs):")
for v in "abcd":
    row = [f"{c} {pm(res(v, c, 'hungarian', 'mvc8'))}" for c in clips]
    row += [f"{c} FF {pm(res(v, c, 'first-frame', 'mvc8'))}" for c in clips[2:]]
    secs = frames = 0.0
    for m in sorted((out / v).glob("seed*/*/*/.done.json")):
        d = json.loads(m.read_text())
        secs, frames = secs + d["seconds"], frames + d["frames"]
    print(f"{v}: " + ", ".join(row) + f"; {secs / max(frames, 1):.2f} s/frame")
EOF
