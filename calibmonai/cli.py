"""Command line: ``calibmonai prepare | demo | export-bundle | methods`` (python-fire)."""

from __future__ import annotations

import sys


class CLI:
    """calibmonai: calibration of MONAI segmentation networks."""

    def prepare(self, out: str = "data/mni_tissue", subjects: int = 24, seed: int = 0) -> str:
        """Prepare the embedded MNI152 brain-tissue task in OUT."""
        from calibmonai.data import prepare_mni_tissue

        n_val = max(1, subjects // 6)
        return str(prepare_mni_tissue(out, num_subjects=subjects, split=(subjects - 2 * n_val, n_val, n_val), seed=seed))

    def demo(self, out: str = "results/demo", data: str = "data/mni_tissue", runs: str = "runs", methods: str = "ce,mbls,meep_ce_kl", epochs: int = 30, subjects: int = 24) -> None:
        """Train and evaluate CE, MbLS and MEEP on the embedded task; write the comparison to OUT."""
        from calibmonai.demo import run_demo

        run_demo(out=out, data=data, runs=runs, methods=methods, epochs=epochs, subjects=subjects)

    def export_bundle(self, bundle: str = "mni_tissue_seg2d", method: str = "mbls", out: str = "exported_bundle", overwrite: bool = False) -> str:
        """Write a self-contained bundle for one dataset x method combination to OUT."""
        from calibmonai.bundle_export import export_bundle

        return str(export_bundle(bundle, method, out, overwrite=overwrite))

    def infer(
        self,
        input: str,
        output: str,
        bundle: str = "mni_tissue_seg2d",
        method: str = "ce",
        calibrator: str | None = None,
        runs_dir: str = "runs",
        overwrite: bool = False,
        save_probs: bool = False,
    ) -> None:
        """Segment the scans of INPUT (folder, glob or file) into OUTPUT with a trained run of BUNDLE x METHOD
        (or an exported bundle folder), writing *_seg, *_conf, *_uncertainty (and *_prob) NIfTI files."""
        from calibmonai.bundle_tools import inference_config_files, run_workflow

        files, overrides = inference_config_files(bundle, method, runs_dir)
        run_workflow("inference", files, input_dir=input, output_dir=output, calibrator=calibrator, overwrite=overwrite, save_probs=save_probs, **overrides)

    def methods(self) -> list:
        """List the training methods."""
        from calibmonai.losses import METHODS

        return [f"{k}: {v.description}" for k, v in METHODS.items()]


def main(argv: list[str] | None = None) -> None:
    import fire

    try:
        fire.Fire(CLI, command=argv, name="calibmonai")
    except (FileNotFoundError, ValueError, FileExistsError, RuntimeError) as e:
        root = e
        while root.__cause__ is not None:  # MONAI's config parser wraps errors raised in expressions
            root = root.__cause__
        print(f"calibmonai: error: {root}", file=sys.stderr)
        sys.exit(1 if "scan(s) failed" in str(root) else 2)


if __name__ == "__main__":
    main()
