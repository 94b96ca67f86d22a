"""Data sets: ESC-50 (download, verify, load), field-recording folders, a synthetic set."""

from tympan.datasets.esc50 import ESC50, load_esc50, locate_data_dir, resolve_data_dir, verify_esc50
from tympan.datasets.field import FieldScan, scan_field_dir
from tympan.datasets.synthetic import make_synthetic

__all__ = [
    "ESC50",
    "FieldScan",
    "load_esc50",
    "locate_data_dir",
    "make_synthetic",
    "resolve_data_dir",
    "scan_field_dir",
    "verify_esc50",
]
