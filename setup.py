"""Python packaging of a2llm_ros.

On the bare-Python path the bootstrap installs this package (editable) into
the virtual environment; on a ROS 2 installation colcon builds the package
with CMake (see CMakeLists.txt) and this file is not used by colcon.  The
console scripts here and the executables in scripts/ name the same entry
points (a test checks that).
"""
from setuptools import find_packages, setup

PACKAGE = "a2llm_ros"

NODE_ENTRY_POINTS = [
    "a2llm_node = a2llm_ros.ros.a2llm_node:main",
    "flame_retarget_node = a2llm_ros.ros.flame_retarget_node:main",
    "face_preview_node = a2llm_ros.ros.face_preview_node:main",
]

setup(
    name=PACKAGE,
    version="0.1.0",
    description="A2-LLM conversational audio avatar LLM for ROS 2",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=[PACKAGE, PACKAGE + ".*"]),
    include_package_data=True,
    package_data={PACKAGE: ["_vendor/*/package.xml", "_vendor/*/CMakeLists.txt",
                            "_vendor/*/msg/*.msg", "_vendor/*/COLCON_IGNORE",
                            "checkpoints/default/*", "assets/*.wav"]},
    entry_points={"console_scripts": ["a2llm = a2llm_ros.tools.cli:main"] + NODE_ENTRY_POINTS},
)
