"""lt_d2: long-tailed detection on Detectron2 (see README.md for installation)."""

from setuptools import find_packages, setup

setup(
    name="lt_d2",
    version="0.1.0",
    description="Gradient-balancing classifiers and diagnostics for long-tailed detection "
    "on Detectron2",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=("lt_d2", "lt_d2.*")),
    # the published numbers read by python -m lt_d2.evaluation.paper_table
    package_data={"lt_d2.evaluation": ["paper_results.json"]},
    python_requires=">=3.8",
    # torch and detectron2 are deliberately not listed: GPU users bring their own builds
    # (README.md); install/install.sh sets up the pinned CPU environment.
    install_requires=["lvis>=0.5.3", "numpy", "matplotlib", "tensorboard"],
    entry_points={
        "console_scripts": [
            "lt-d2-stats=lt_d2.data.stats_cli:main",
        ]
    },
)
