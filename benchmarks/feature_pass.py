"""What the features-only stop saves: the feature pass with and without it, on one model.

Without stage 3 (a bilinear or other upsampler) the feature pass ends once the deepest feature
block's q is stored at the feature step (``attention.features_only_stop``). This times that
pass against the whole pass (the stop disabled) on the same frames and checks that the
features are bit-identical. Usage:
``python benchmarks/feature_pass.py [--model sd21-base-random] [--size 256] [--frames 4]``.
"""

import argparse
import sys
import time
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zsvss_nb.backbones import load_backbone  # noqa: E402
from zsvss_nb.backbones.sd import passes  # noqa: E402
from zsvss_nb.config import SegmentConfig  # noqa: E402
from zsvss_nb.features import extract  # noqa: E402


def _best(backbone, frames, cfg, repeats: int):
    times, result = [], None
    for _ in range(repeats):
        tic = time.perf_counter()
        result = extract(backbone, frames, cfg)
        times.append(time.perf_counter() - tic)
    return min(times), result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sd21-base-random", help="an SD model name or path")
    parser.add_argument("--size", type=int, default=256, help="frame side in pixels (x64)")
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2, help="the best of this many runs")
    args = parser.parse_args(argv)

    backbone = load_backbone(args.model, device="cpu")
    cfg = SegmentConfig.fast()  # bilinear upsampling: stage 1 reads features only
    gen = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (args.frames, 3, args.size, args.size), generator=gen)
    frames = frames.to(torch.uint8)
    extract(backbone, frames[:1], cfg)  # one-time kernel set-up, untimed
    stopped, short = _best(backbone, frames, cfg, args.repeats)
    with mock.patch.object(passes, "features_only_stop", lambda capture: None):
        whole, full = _best(backbone, frames, cfg, args.repeats)
    same = torch.equal(short.features, full.features) and all(
        torch.equal(short.block_features[b], q) for b, q in full.block_features.items()
    )
    print(
        f"{args.model}, {args.frames} frames of {args.size}x{args.size}, "
        f"{torch.get_num_threads()} threads: whole pass {whole:.2f} s, with the stop "
        f"{stopped:.2f} s ({whole / stopped:.2f}x), features bit-identical: {same}"
    )
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
