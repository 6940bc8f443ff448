"""scene3d: 3D neural scene reconstruction from photographs.

Heavy dependencies (torch, pycolmap, open3d) are imported lazily by the modules that need them, so
importing this package and running ``scene3d --help`` stay fast.

OpenMP threads wait passively unless the user chose otherwise: torch and numba each bring an
OpenMP runtime, and on a CPU machine their idle threads otherwise spin for milliseconds after
every parallel region, stealing the cores the other one is computing on (the CPU rasterizer ran
2-8x slower that way). This only takes effect when scene3d is imported before torch.
"""

import os
import sys

OMP_POLICY_SET_LATE = "torch" in sys.modules and "OMP_WAIT_POLICY" not in os.environ
"""True when torch was imported first, so the passive policy below could not reach it."""
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
