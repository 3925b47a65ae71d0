"""Does bfloat16 pay off on this machine? Times one matmul and one convolution in fp32 and bf16.

Run it before choosing ``--modes bf16-decode,bf16-unet,fast``: on a CPU without AVX512-BF16 or
AMX, PyTorch emulates bf16 and it is far slower than fp32. Usage:
``python benchmarks/precision_probe.py [--size 2048] [--repeats 3]``.
"""

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zsvss_nb.backbones.precision import default_device, native_bf16  # noqa: E402


def _seconds(fn, repeats: int) -> float:
    fn()  # one-time kernel set-up
    tic = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - tic) / repeats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048, help="side of the square matmul")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    device = default_device()
    g = torch.Generator().manual_seed(0)
    a = torch.randn(args.size, args.size, generator=g).to(device)
    b = torch.randn(args.size, args.size, generator=g).to(device)
    # the UNet's commonest convolution at 256x256 input: 320 channels, 3x3, 32x32 latent
    conv = torch.nn.Conv2d(320, 320, 3, padding=1).to(device)
    x = torch.randn(2, 320, 32, 32, generator=g).to(device)
    print(f"device {device}, torch {torch.__version__}, native bf16: {native_bf16(device)}")
    print("| op | float32 [s] | bfloat16 [s] | bf16 / fp32 |")
    print("|---|---|---|---|")

    def conv_bf16():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            return conv(x)

    a16, b16 = a.bfloat16(), b.bfloat16()
    rows = {
        f"matmul {args.size}x{args.size}": (lambda: a @ b, lambda: a16 @ b16),
        "conv 320->320 3x3 on 2x32x32": (lambda: conv(x), conv_bf16),
    }
    with torch.inference_mode():
        for name, (fp32, bf16) in rows.items():
            t32, t16 = _seconds(fp32, args.repeats), _seconds(bf16, args.repeats)
            print(f"| {name} | {t32:.3f} | {t16:.3f} | {t16 / t32:.1f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
