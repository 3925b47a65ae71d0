"""Kernel-level paths on the CPU (issue 28 item 4): ``torch.compile`` of the UNet and of the VAE
decoder, and ONNX Runtime for the VAE decoder, each against eager PyTorch in one process.

Every path is timed back to back with eager, alternating, ``--repeats`` times, and the medians
are reported with the one-time cost (compile or export + session creation) and the largest
absolute difference of the outputs from eager's. Usage:
``python benchmarks/cpu_kernels.py [--model sd21-base-random] [--size 256] [--batch 2]
[--repeats 5] [--paths vae-compile,vae-onnx,unet-compile] [--json out.json]``.
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zsvss_nb.backbones import load_backbone  # noqa: E402
from zsvss_nb.io.provenance import machine_info  # noqa: E402

PATHS = ("vae-compile", "vae-onnx", "unet-compile")


def _timed(fn, *args) -> tuple[float, torch.Tensor]:
    tic = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - tic, out


def _onnx_decoder(decoder: torch.nn.Module, z: torch.Tensor, folder: str):
    """The VAE decoder exported to ONNX (TorchScript exporter) and its ORT CPU session."""
    import onnxruntime as ort

    path = Path(folder) / "decoder.onnx"
    torch.onnx.export(
        decoder,
        (z,),
        str(path),
        input_names=["z"],
        output_names=["image"],
        dynamic_axes={"z": {0: "n"}, "image": {0: "n"}},
        opset_version=17,
        dynamo=False,
    )
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {"z": x.numpy()})[0])

    return run


def _compare(name: str, eager, setup, args, repeats: int) -> dict:
    """Median seconds of ``eager`` and ``fast`` (built by ``setup``), alternating."""
    tic = time.perf_counter()
    fast = setup()
    first, out_fast = _timed(fast, *args)
    one_time = time.perf_counter() - tic
    _, out_eager = _timed(eager, *args)
    eager_s, fast_s = [], []
    for _ in range(repeats):
        eager_s.append(_timed(eager, *args)[0])
        fast_s.append(_timed(fast, *args)[0])
    result = {
        "path": name,
        "one_time_s": round(one_time, 2),
        "first_call_s": round(first, 3),
        "eager_median_s": round(statistics.median(eager_s), 4),
        "fast_median_s": round(statistics.median(fast_s), 4),
        "eager_s": [round(t, 4) for t in eager_s],
        "fast_s": [round(t, 4) for t in fast_s],
        "max_abs_diff": float((out_fast.float() - out_eager.float()).abs().max()),
        "bit_identical": bool(torch.equal(out_fast, out_eager)),
    }
    result["speedup"] = round(result["eager_median_s"] / result["fast_median_s"], 3)
    print(json.dumps({k: v for k, v in result.items() if k not in ("eager_s", "fast_s")}))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sd21-base-random")
    parser.add_argument("--size", type=int, default=256, help="frame side in pixels (x64)")
    parser.add_argument("--batch", type=int, default=2, help="frames (VAE) / samples (UNet)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--paths", default=",".join(PATHS))
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    paths = [p for p in args.paths.split(",") if p]
    backbone = load_backbone(args.model, device="cpu")
    backbone.release_text_encoder()
    gen = torch.Generator().manual_seed(0)
    side = args.size // 8
    z = torch.randn(args.batch, 4, side, side, generator=gen)
    decoder = backbone.vae.decoder
    results = []
    with torch.inference_mode(), tempfile.TemporaryDirectory() as folder:
        if "vae-compile" in paths:
            results.append(
                _compare(
                    "vae-compile",
                    decoder,
                    lambda: torch.compile(decoder),
                    (z,),
                    args.repeats,
                )
            )
        if "vae-onnx" in paths:
            results.append(
                _compare(
                    "vae-onnx",
                    decoder,
                    lambda: _onnx_decoder(decoder, z, folder),
                    (z,),
                    args.repeats,
                )
            )
        if "unet-compile" in paths:
            emb = backbone.prompt_embedding("").expand(args.batch, -1, -1)
            t = torch.full((args.batch,), 500.0)

            def eager_unet(x):
                return backbone.unet(x, t, encoder_hidden_states=emb).sample

            def compiled():
                unet = torch.compile(backbone.unet, dynamic=True)
                return lambda x: unet(x, t, encoder_hidden_states=emb).sample

            results.append(_compare("unet-compile", eager_unet, compiled, (z,), args.repeats))
    report = {
        "model": args.model,
        "size": args.size,
        "batch": args.batch,
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": machine_info(),
        "results": results,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
