"""Build of creativity_fast and its C++ (and optional CUDA) extension ``creativity_fast._C``.

CPU kernels are always built. CUDA kernels (csrc/cuda/*.cu) are added when the
installed torch has CUDA and nvcc is found, or when FORCE_CUDA=1. Install with
``pip install --no-build-isolation .`` so the extension compiles against the
installed torch.
"""

import glob
import os

from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def want_cuda() -> bool:
    if os.environ.get("FORCE_CUDA", "0") == "1":
        return True
    return torch.version.cuda is not None and CUDA_HOME is not None


def extension():
    rel = lambda pattern: sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, pattern)))  # noqa: E731
    sources = rel("csrc/*.cpp") + rel("csrc/cpu/*.cpp")
    cxx = ["-O3", "-std=c++17", "-fopenmp" if os.name != "nt" else "/openmp"]
    extra = {"cxx": cxx}
    kwargs = dict(include_dirs=[os.path.join(HERE, "csrc")], extra_link_args=["-fopenmp"])
    if want_cuda():
        extra["nvcc"] = ["-O3", "-std=c++17", "--use_fast_math", "-lineinfo"]
        extra["cxx"] = cxx + ["-DCF_WITH_CUDA"]
        return CUDAExtension("creativity_fast._C", sources + rel("csrc/cuda/*.cu"), extra_compile_args=extra, **kwargs)
    return CppExtension("creativity_fast._C", sources, extra_compile_args=extra, **kwargs)


setup(
    name="creativity_fast",
    version="0.1.0",
    description="Exact, fast equivariant local score (ELS) machines for diffusion creativity research",
    long_description=open(os.path.join(HERE, "README.md")).read() if os.path.exists(os.path.join(HERE, "README.md")) else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["creativity_fast", "creativity_fast.*"]),
    package_data={"creativity_fast": ["data/embedded/*", "checkpoints/*"]},
    install_requires=["torch>=2.4", "numpy", "tqdm", "pillow", "matplotlib"],
    extras_require={"test": ["pytest", "pytest-benchmark"], "bench": ["pytest-benchmark", "pykeops"],
                    # --net with a local diffusers folder (creativity_fast.adapters); the core never imports it
                    "diffusers": ["diffusers", "safetensors", "huggingface_hub"]},
    entry_points={"console_scripts": ["creativity-fast=creativity_fast.cli:main"]},
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    zip_safe=False,
)
