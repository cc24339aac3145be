"""kerasmlic: Keras 3 multi-label image classification with NLP-style label decoders."""

from setuptools import find_packages, setup

setup(
    name="kerasmlic",
    version="0.1.0",
    description=(
        "Multi-label image classification in Keras 3: label embeddings, recurrent "
        "label decoders, attention, and the classic baselines, on COCO."
    ),
    license="Apache-2.0",
    packages=find_packages(include=["kerasmlic", "kerasmlic.*"]),
    python_requires=">=3.11,<3.14",
    install_requires=[
        "tensorflow>=2.21,<2.22",
        "keras>=3.15,<3.16",
        "keras-hub>=0.32,<0.33",
        "keras-tuner>=1.4.7,<1.5",
        "pycocotools>=2.0.8,<2.1",
        "numpy>=1.26,<2.5",
        "pillow>=10.0,<14",
        "pyyaml>=6.0,<7",
        "tqdm>=4.66,<5",
        "matplotlib>=3.8,<4",
        "tensorboard>=2.20,<2.22",
    ],
    extras_require={
        "test": [
            "pytest>=8,<10",
            "pytest-xdist>=3.5,<4",
            "scikit-learn>=1.4,<2",
            "ruff>=0.6,<1",
            "nbclient>=0.10,<0.12",
            "nbformat>=5.9,<6",
            "ipykernel>=6.29,<8",
            "psutil>=5.9,<8",
        ],
    },
    entry_points={"console_scripts": ["kerasmlic=kerasmlic.cli:main"]},
)
