"""Command line: ``calibmonai prepare | demo | infer | preview | export-bundle | check-data | study | methods`` (python-fire).

Flags are checked against each command's parameters before anything runs (python-fire alone would run the command
and complain about an unknown flag afterwards), and boolean flags accept true/false/yes/no/1/0. ``--help`` (``-h``)
after any command prints that command's usage (python-fire would take it for a config key of the commands that pass
other flags on to their config).
"""

from __future__ import annotations

import inspect
import os
import sys
from pathlib import Path
from typing import Any


class CLI:
    """calibmonai: calibration of MONAI segmentation networks."""

    def prepare(self, out: str = "data/mni_tissue", subjects: int = 24, seed: int = 0) -> str:
        """Prepare the embedded MNI152 brain-tissue task in OUT (SUBJECTS >= 3: training, validation and test)."""
        from calibmonai.data import prepare_mni_tissue
        from calibmonai.demo import folder_flag, integer_flag

        out = folder_flag(out, "out")
        subjects = integer_flag(subjects, "subjects", minimum=3, what="an integer >= 3 (training, validation and test subjects)")
        seed = integer_flag(seed, "seed", minimum=0, maximum=2**32 - 1, what="an integer in [0, 2**32 - 1]")
        n_val = max(1, subjects // 6)
        return str(prepare_mni_tissue(out, num_subjects=subjects, split=(subjects - 2 * n_val, n_val, n_val), seed=seed))

    def demo(self, out: str = "results/demo", data: str = "data/mni_tissue", runs: str | None = None, methods: str | None = None, epochs: int | None = None, subjects: int | None = None, profile: str = "paper", seed: int | None = None, full: bool = False) -> None:
        """Train and evaluate CE, MbLS and MEEP on the embedded task; write the comparison to OUT.
        Default: the over-confidence regime (profile paper: bundles/mni_tissue_seg2d/configs/profiles/paper.yaml),
        its first 400 of 600 epochs, CE, MbLS (margin 5) and MEEP, runs in runs/400_epochs (about 11 min on 2 CPU cores).
        --full true: the profile's whole schedule and methods (600 epochs; MbLS margins 5, 8, 10), runs in runs.
        --profile none: the 24-subject task, 30 epochs (--subjects N), runs in runs.
        --methods ce,mbls:margin=5: the methods (bundles/methods/), ``name:key=value`` setting a loss parameter;
        every flag and method is checked before anything is trained.
        --seed N: another training seed (use its own --runs folder)."""
        from calibmonai.demo import run_demo

        run_demo(out=out, data=data, runs=runs, methods=methods, epochs=epochs, subjects=subjects, profile=profile, seed=seed, full=full)

    def export_bundle(
        self,
        bundle: str = "mni_tissue_seg2d",
        method: str = "mbls",
        out: str = "exported_bundle",
        runs_dir: str = "runs",
        loss_kwargs: Any = None,
        backbone: str | None = None,
        untrained: Any = False,
        overwrite: Any = False,
        profile: str | None = None,
        **config_overrides: Any,
    ) -> str:
        """Write a self-contained bundle for one trained run (BUNDLE x METHOD [x BACKBONE], hyper-parameters
        LOSS_KWARGS, trained under RUNS_DIR) to OUT, with its weights and fitted calibrators. Any other --KEY VALUE
        is a config key the run was trained with (e.g. ``--network_def#channels "[16, 32, 64, 128]"``) or an
        inference setting as ``calibmonai infer`` takes it (``--inference_spacing "[1.0, 1.0, 1.0]"``), set in every
        exported config that has the key. --overwrite true replaces OUT only when it is empty or a previous export
        (a folder holding other files is refused, not deleted). --profile paper: a run trained under that profile
        (the demo's runs): its settings and the weights it was evaluated with are exported."""
        from calibmonai.bundle_export import export_bundle

        return str(export_bundle(bundle, method, out, runs_dir=runs_dir, loss_kwargs=loss_kwargs, backbone=backbone, untrained=untrained, overwrite=overwrite, profile=profile, **config_overrides))

    def infer(
        self,
        input: str,
        output: str,
        bundle: str = "mni_tissue_seg2d",
        method: str = "ce",
        backbone: str | None = None,
        calibrator: str | None = None,
        runs_dir: str = "runs",
        overwrite: Any = False,
        save_probs: Any = False,
        profile: str | None = None,
        preview: Any = False,
        **config_overrides: Any,
    ) -> None:
        """Segment the scans of INPUT (folder, glob or file) into OUTPUT with a trained run of BUNDLE x METHOD
        (or an exported bundle folder), writing *_seg, *_conf, *_uncertainty (and *_prob) NIfTI files. Any other
        --KEY VALUE sets that key of the inference config, as with ``monai.bundle run`` (e.g. the training's
        ``--network_def#channels "[16, 32, 64, 128]"``, ``--loss_kwargs "{'margin': 5.0, 'alpha': 0.1}"``).
        --profile paper: a run trained under that profile (the demo's runs), with the weights it was evaluated with.
        --preview true: also a <case>_preview.png per scan (scan, segmentation, confidence, uncertainty)."""
        from calibmonai.bundle_tools import NO_PROFILE, as_bool, check_config_keys, inference_config_files, profile_overrides, run_workflow

        overwrite, save_probs = as_bool(overwrite, "overwrite"), as_bool(save_probs, "save_probs")
        preview = as_bool(preview, "preview")
        files, overrides = inference_config_files(bundle, method, runs_dir, backbone=backbone)
        if profile not in NO_PROFILE:
            if files[0].endswith("inference.json"):
                raise ValueError(f"--profile does not apply to an exported bundle ({bundle}): the export already holds the run's weights and settings.")
            overrides.update(profile_overrides(bundle, str(profile), files))  # the profile is checked there
        check_config_keys(files, config_overrides, "calibmonai infer")
        settings = dict(input_dir=input, output_dir=output, calibrator=calibrator, overwrite=overwrite, save_probs=save_probs, **overrides, **config_overrides)
        try:
            run_workflow("run", files, **settings)
        finally:  # the scans that were segmented get their preview even when others failed
            if preview and os.path.isdir(output):
                from calibmonai.preview import bundle_scans, preview_folder

                try:
                    preview_folder(output, *bundle_scans(files, **settings))
                except FileNotFoundError:
                    pass  # no scan was segmented: the inference's own error says why

    def preview(self, output: str, input: str | None = None, bundle: str = "mni_tissue_seg2d") -> None:
        """Write <case>_preview.png beside the maps of each case in OUTPUT (a folder written by ``calibmonai infer``
        or a bundle's inference workflow): axial, coronal and sagittal slices through the segmented foreground of
        the scan, the segmentation over it, the confidence and the uncertainty. --input SCANS: the scans segmented
        (found by case name as BUNDLE's inference reads them), shown under the segmentation; BUNDLE (or an exported
        bundle's folder) also names the classes."""
        from calibmonai.bundle_tools import inference_config_files
        from calibmonai.inference import input_files
        from calibmonai.preview import bundle_scans, preview_folder

        if input not in (None, ""):
            try:
                input_files(str(input), ())  # a missing file or folder (a glob may match nothing)
            except FileNotFoundError:
                raise FileNotFoundError(f"--input {input}: no such file or folder.") from None
        files, _ = inference_config_files(bundle, "ce")
        preview_folder(output, *bundle_scans(files, input_dir=str(input or "")))

    def check_data(self, data: str, bundle: str = "mni_tissue_seg2d") -> None:
        """Read the dataset folder DATA as BUNDLE's loader will (default: the embedded task's bundle, as for infer
        and preview; give a dataset bundle, e.g. --bundle acdc_seg2d, for a public dataset's download) and report, per
        case, what is wrong and how many cases are usable (exit status 1 when a case is unusable)."""
        from calibmonai.datasets import bundle_dataset, check_folder, format_report

        report = check_folder(bundle_dataset(bundle), data)
        print(format_report(report))
        if not report.ok:
            sys.exit(1)

    def study(self) -> Any:
        """Plan, run and report a study: calibmonai study plan|run|report STUDY.yaml (see studies/ and the README)."""
        from calibmonai.study.cli import StudyCLI

        return StudyCLI()

    def methods(self) -> list:
        """List the training methods."""
        from calibmonai.losses import METHODS

        return [f"{k}: {v.description}" for k, v in METHODS.items()]


def check_command_flags(cls: type, argv: list[str], program: str) -> None:
    """Refuse an unknown command of ``cls`` (a python-fire class) or an unknown flag of it before anything runs,
    naming it and the accepted ones (python-fire alone runs the command first and complains afterwards)."""
    if not argv or argv[0].startswith("-"):
        return
    name = argv[0].replace("-", "_")
    target = getattr(cls, name, None)
    if target is None or name.startswith("_") or not callable(target):
        commands = [c.replace("_", "-") for c, v in vars(cls).items() if not c.startswith("_") and callable(v)]
        raise ValueError(f"unknown command {argv[0]!r} of `{program}`; commands: {', '.join(commands)}.")
    if name == "study" and cls is CLI:  # `calibmonai study <sub-command> ...`: the sub-command's own flags
        from calibmonai.study.cli import StudyCLI

        return check_command_flags(StudyCLI, argv[1:], f"{program} study")
    signature = inspect.signature(target).parameters
    params = [p for p, v in signature.items() if p != "self" and v.kind != v.VAR_KEYWORD]
    if any(v.kind == v.VAR_KEYWORD for v in signature.values()):
        return  # the command passes other flags on as config keys and checks them against its config
    for arg in argv[1:]:
        if arg in ("--help", "-h") or not arg.startswith("--"):
            continue
        flag = arg[2:].split("=", 1)[0].replace("-", "_")
        if flag.startswith("no") and flag[2:] in params:
            continue
        if flag not in params:
            raise ValueError(f"unknown flag --{flag} for `{program} {argv[0]}`; flags: {', '.join('--' + p for p in params)}.")


def _check_flags(argv: list[str]) -> None:
    check_command_flags(CLI, argv, "calibmonai")


def help_command(argv: list[str]) -> list[str] | None:
    """The python-fire command line printing the usage of the command that ``argv`` asks ``--help``/``-h`` of
    (``export-bundle --help`` -> ``export-bundle -- --help``), or None when it asks none. python-fire reads a
    ``--help`` after a command whose function takes ``**kwargs`` (export-bundle, infer) as one of them, and only
    after ``--`` as its own flag. The usage is that of the command named (``study run --help``: ``study run``),
    whatever other flags follow."""
    words = argv[: argv.index("--")] if "--" in argv else argv
    if not any(w in ("--help", "-h") for w in words):
        return None
    path: list[str] = []
    target: type = CLI
    for word in words:
        name = word.replace("-", "_")
        if word.startswith("-") or name.startswith("_") or not callable(getattr(target, name, None)):
            break
        path.append(word)
        if target is CLI and name == "study":  # `calibmonai study <sub-command>`
            from calibmonai.study.cli import StudyCLI

            target = StudyCLI
        else:
            break
    return [*path, "--", "--help"]


def main(argv: list[str] | None = None) -> None:
    import fire

    args = list(sys.argv[1:] if argv is None else argv)
    usage = help_command(args)
    if usage is not None:
        fire.Fire(CLI(), command=usage, name="calibmonai")  # prints the usage and exits with status 0
        return
    try:
        _check_flags(args)
        fire.Fire(CLI(), command=args, name="calibmonai")
    except (FileNotFoundError, ValueError, FileExistsError, RuntimeError) as e:
        message = error_message(e)
        print(f"calibmonai: error: {message}", file=sys.stderr)
        sys.exit(1 if "scan(s) failed" in message else 2)


_PACKAGE_DIR = Path(__file__).resolve().parent


def _raised_in_calibmonai(e: BaseException) -> bool:
    """Whether the innermost frame of ``e``'s traceback is calibmonai's code (not torch's, MONAI's, ...)."""
    tb = e.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return _PACKAGE_DIR in Path(tb.tb_frame.f_code.co_filename).resolve().parents


def error_message(e: BaseException) -> str:
    """The message for a user of the error ``e``: along its ``__cause__`` chain (MONAI's config parser wraps errors
    raised in expressions; calibmonai's messages wrap the library error they explain, e.g. torch's on a truncated
    checkpoint), the outermost exception raised by calibmonai's own code, else the innermost cause; an empty message
    is replaced by the exception's type."""
    from calibmonai.bundle_tools import cause_chain

    chain = cause_chain(e)
    ours = [x for x in chain if _raised_in_calibmonai(x)]
    picked = ours[0] if ours else chain[-1]
    return str(picked) or f"{type(picked).__name__} (no message) from {type(chain[0]).__name__}: {chain[0]}"


if __name__ == "__main__":
    main()
