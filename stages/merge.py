"""DVC stage ``merge``: one scene from the trained patches (data/merged).

Reads the ``merge`` section of params.yaml.
"""

from pathlib import Path

from patchsplat.config import load_params
from patchsplat.console import guarded
from patchsplat.merge import merge_patches, print_merge_table


def main() -> None:
    print_merge_table(merge_patches(Path("data/patches"), Path("data/trained"), Path("data/merged"), load_params().merge))


if __name__ == "__main__":
    guarded(main)
