#!/usr/bin/env bash
# Regenerate the bundled scene scenes/kitti00 from ../shared/data/kitti_odometry_00
# (KITTI odometry sequence 00, frames 0-9, SemanticKITTI poses, both colour
# cameras at full resolution, LiDAR + SGBM stereo points (to 25 m, and 25-40 m as
# "stereo_far"), LiDAR depth images of every frame and stereo depth images of the
# training frames).
# Usage (from the repository root): tools/make_sample_scene.sh [DATA_ROOT]
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${1:-../shared/data/kitti_odometry_00}"
LICENSE_TMP="$(mktemp)"
if [ -f scenes/kitti00/LICENSE.md ]; then cp scenes/kitti00/LICENSE.md "$LICENSE_TMP"; fi
python -m dnmp.cli convert kitti-odometry "$DATA" --out scenes/kitti00 \
    --sequence 00 --first 0 --last 9 --cameras image_2,image_3 --poses auto \
    --downscale 1 --max-depth 80 --stereo-max-depth 40 --stereo-near-depth 25 --voxel 0.05 \
    --name kitti00 --overwrite
# The licence note is kept in git; restore it after the folder was rewritten.
if [ -s "$LICENSE_TMP" ]; then cp "$LICENSE_TMP" scenes/kitti00/LICENSE.md; fi
rm -f "$LICENSE_TMP"
rm -f scenes/kitti00/overview.png  # the converter's top-down picture: not shipped
du -sh scenes/kitti00
