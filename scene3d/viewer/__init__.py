"""``scene3d view``: a web viewer (viser) that renders on the server with the representation's own
renderer, for saved runs, scene files and live training.

Modules: ``camera`` (browser camera <-> Cameras, camera-path JSON), ``target`` (loading what is
shown), ``frames`` (render modes), ``controls`` (representation-specific controls), ``server`` (the
viser app; imports viser).
"""
