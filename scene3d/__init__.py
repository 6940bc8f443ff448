"""scene3d: 3D neural scene reconstruction from photographs.

Heavy dependencies (torch, pycolmap, open3d) are imported lazily by the modules that need them, so
importing this package and running ``scene3d --help`` stay fast.
"""

__version__ = "0.1.0"
