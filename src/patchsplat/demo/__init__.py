"""The procedural demo scene: a ray-cast, textured ground with boxes and spheres, seen by cameras
on paths and orbits, written as a COLMAP scene with a ground-truth mesh and a manifest.

Public interface::

    config = with_overrides(base_or_None, num_cameras=..., render_images=False, ...)
    manifest = generate_demo_scene(config, out_dir, progress=True)
"""

from patchsplat.demo.generate import generate_demo_scene
from patchsplat.demo.overrides import with_overrides

__all__ = ["generate_demo_scene", "with_overrides"]
