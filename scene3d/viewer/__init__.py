"""``scene3d view``: a web viewer (viser) that renders on the server with the representation's own
renderer, for saved runs, scene files and live training.

Modules: ``camera`` (browser camera <-> Cameras, camera-path JSON and its ceilings), ``target``
(loading what is shown), ``frames`` (render modes), ``client`` (one browser's render thread),
``safety`` (websocket origins, upload caps, server-made file names, bounded numbers from the page),
``server`` (the viser app; imports viser).
"""
