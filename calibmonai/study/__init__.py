"""Studies: plan, run (locally, on Ray or on Slurm) and report the papers' comparison grids over any bundle.

``calibmonai study plan|run|report STUDY.yaml`` (:class:`calibmonai.study.cli.StudyCLI`); see
:mod:`calibmonai.study.spec` for the study file.
"""

from calibmonai.study.spec import PAPER_METHODS, BundleSpec, Resources, StudySpec, grid_points, load_study, swept_parameter

__all__ = ["PAPER_METHODS", "BundleSpec", "Resources", "StudySpec", "grid_points", "load_study", "swept_parameter"]
