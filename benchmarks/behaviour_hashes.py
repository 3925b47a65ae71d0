"""Fingerprint what the CLI writes, to prove that a refactoring changed no result.

Runs a fixed set of ``zsvss segment`` / ``zsvss dataset`` / ``zsvss bench`` commands on the
sample clips in data/ and records the sha256 of every label PNG they write and the bench's
UNet evaluations and VAE decodes per frame. Run it before a refactoring with ``--out`` and
after it with ``--check``; any differing hash or count is listed and the exit code is 1.

    python benchmarks/behaviour_hashes.py --out before.json        # about 10 min on 2 cores
    python benchmarks/behaviour_hashes.py --check before.json

Each case runs the installed ``zsvss`` in its own process with the package's own defaults.
The clips are cut to their first ``FRAMES`` frames (two windows of 14, the last one shifted),
so every path through the windowing runs without taking long.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
FRAMES = 16
CAMVID = DATA / "camvid" / "0006R0" / "images"
DAVIS = DATA / "davis2016" / "blackswan" / "JPEGImages"

# name -> (command after "zsvss", the clip it reads, or None for dataset/bench commands)
CASES: dict[str, tuple[list[str], Path | None]] = {
    "a_tiny_paper_sd": (["--model", "tiny", "--k", "6"], CAMVID),
    "b_tiny_paper_compat": (["--model", "tiny", "--k", "6", "--preset", "paper-compat"], CAMVID),
    "c_tiny_svd_paper_svd": (
        ["--model", "tiny-svd", "--preset", "paper-svd", "--k", "4", "--max-side", "256"],
        DAVIS,
    ),
    "d_dinov2_bilateral": (
        ["--model", "dinov2-s", "--max-side", "448", "--upsample", "bilateral", "--k", "4"],
        DAVIS,
    ),
    "e_dataset_camvid_fast": (
        ["dataset", "camvid", str(DATA / "camvid"), "--model", "tiny", "--preset", "fast"],
        None,
    ),
}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _clip(src: Path, folder: Path) -> Path:
    """The first FRAMES frames of ``src`` as symlinks in ``folder`` (same names)."""
    folder.mkdir(parents=True)
    for frame in sorted(src.iterdir())[:FRAMES]:
        (folder / frame.name).symlink_to(frame)
    return folder


def _labels(out: Path) -> dict[str, str]:
    """sha256 of every label PNG below ``out`` (colour PNGs and overlays are derived)."""
    found = {}
    for png in sorted(out.rglob("*.png")):
        rel = png.relative_to(out).as_posix()
        if "/color/" in f"/{rel}" or rel.startswith("color/"):
            continue
        found[rel] = _sha256(png)
    return found


def _run(args: list[str]) -> None:
    started = time.perf_counter()
    proc = subprocess.run(["zsvss", "-q", *args], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"zsvss {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    print(f"  {time.perf_counter() - started:6.1f} s  zsvss {' '.join(args)}", flush=True)


def record(work: Path) -> dict[str, object]:
    """Run every case in ``work`` and return {case: {file: sha256}} plus the bench counts."""
    result: dict[str, object] = {}
    for name, (args, clip) in CASES.items():
        out = work / name
        if clip is None:
            _run([*args, "--out", str(out)])
        else:
            frames = _clip(clip, work / f"{name}_frames")
            _run(["segment", str(frames), "--out", str(out), "--no-overlay", *args])
        result[name] = _labels(out)
    bench_json = work / "bench.json"
    _run(["bench", "--model", "tiny", "--compare-reference", "--json", str(bench_json)])
    bench = json.loads(bench_json.read_text())
    result["f_bench_tiny"] = {
        mode: {
            "unet_evals_per_frame": run["unet_evals_per_frame"],
            "vae_decodes_per_frame": run["vae_decodes_per_frame"],
            "label_agreement": run.get("label_agreement"),
        }
        for mode, run in bench["runs"].items()
    }
    return result


def compare(before: dict, after: dict) -> list[str]:
    """Lines naming every case, file or count that differs."""
    problems = []
    for case in sorted(set(before) | set(after)):
        a, b = before.get(case), after.get(case)
        if a == b:
            continue
        if not isinstance(a, dict) or not isinstance(b, dict):
            problems.append(f"{case}: present in only one run")
            continue
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                problems.append(f"{case}: {key}: {a.get(key)} -> {b.get(key)}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--out", help="write the fingerprints to this JSON file")
    group.add_argument("--check", help="compare with the fingerprints in this JSON file")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="zsvss-hashes-") as tmp:
        result = record(Path(tmp))
    counts = {k: len(v) for k, v in result.items()}
    print("files per case:", json.dumps(counts))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1, sort_keys=True))
        return 0
    problems = compare(json.loads(Path(args.check).read_text()), result)
    for line in problems:
        print(line)
    print("identical" if not problems else f"{len(problems)} differences")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
