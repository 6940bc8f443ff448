"""Placeholder replaced by the SfM module being written on a branch."""
from dataclasses import dataclass
@dataclass
class ProcessConfig:
    matcher: str = "auto"
