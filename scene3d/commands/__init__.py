"""The commands that use a trained scene: eval, render, export and the demo (their CLI signatures
are in :mod:`scene3d.cli`). They reach models only through the Representation interface."""
