"""Where the package's config/ and launch/ files are.

In a colcon install they live in ``share/a2llm_ros/`` (found through the ament
index); in a source checkout next to the ``a2llm_ros`` package.
"""
from __future__ import annotations

import os
from typing import List

__all__ = ["data_dirs", "config_file", "retarget_preset_file"]

PACKAGE = "a2llm_ros"
SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def data_dirs() -> List[str]:
    """Candidate roots holding ``config/`` and ``launch/``, installed share first."""
    roots = []
    try:
        from ament_index_python.packages import (PackageNotFoundError,
                                                 get_package_share_directory)
        try:
            roots.append(get_package_share_directory(PACKAGE))
        except PackageNotFoundError:
            pass
    except ImportError:
        pass
    roots.append(SOURCE_ROOT)
    return roots


def config_file(name: str) -> str:
    """Path of ``config/<name>``; an existing path is returned unchanged."""
    if os.path.isfile(name):
        return name
    tried = []
    for root in data_dirs():
        path = os.path.join(root, "config", name)
        if os.path.isfile(path):
            return path
        tried.append(path)
    raise FileNotFoundError(f"config file {name!r} not found (tried {', '.join(tried)})")


def retarget_preset_file(preset: str) -> str:
    """``config/retarget_<preset>.yaml`` (presets: arkit52, servo_head)."""
    return config_file(f"retarget_{preset}.yaml")
