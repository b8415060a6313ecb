"""Which files go into the wheel; everything else about the project is in pyproject.toml.

The CUDA sources live at the repository's top level (``kernels/``, as the design card
lays it out) and ship inside the package as ``dlprimer/kernels/``: one ``package_dir``
entry maps the one onto the other, beside every package ``find_packages`` sees, so a
package added later is shipped without editing a list.
"""
from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["dlprimer", "dlprimer.*"]) + ["dlprimer.kernels"],
    package_dir={"dlprimer.kernels": "kernels"},
    package_data={"dlprimer.kernels": ["*.cu", "*.cuh"], "dlprimer.data": ["corpus/*.txt"]},
)
