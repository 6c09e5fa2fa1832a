"""Datasets: the embedded MNI152 brain-tissue task."""

from calibmonai.data.mni_tissue import CLASS_NAMES, check_datalist, load_datalist, prepare_mni_tissue, soft_reference, template_files

__all__ = ["CLASS_NAMES", "check_datalist", "load_datalist", "prepare_mni_tissue", "soft_reference", "template_files"]
