"""Build hook: the wheel carries the pipeline definition (see src/patchsplat/pipeline_definition.py).

The project's top-level dvc.yaml, params.yaml, .dvcignore and stages/*.py stay the one source; a
build copies them into the package as patchsplat/pipeline/ (in the build folder only, never into
src/), so an installed wheel can `patchsplat init` and run `patchsplat stage NAME` without a checkout.
An editable install (`pip install -e .`) uses the checkout's files in place and copies nothing.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
DEFINITION_FILES = ("dvc.yaml", "params.yaml", ".dvcignore")


class build_py_with_pipeline(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        target = Path(self.build_lib) / "patchsplat" / "pipeline"
        shutil.rmtree(target, ignore_errors=True)
        (target / "stages").mkdir(parents=True)
        for name in DEFINITION_FILES:
            shutil.copyfile(ROOT / name, target / name)
        for script in sorted((ROOT / "stages").glob("*.py")):
            shutil.copyfile(script, target / "stages" / script.name)


setup(cmdclass={"build_py": build_py_with_pipeline})
