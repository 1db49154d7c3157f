"""Build deepfuse: pure-Python package plus the optional CUDA C++ module deepfuse._C (built with CMake).

Environment:
  DEEPFUSE_SKIP_CUDA=1        install without _C (the triton and torch backends still work)
  DEEPFUSE_CUDA_ARCHS="80;90" CUDA architectures of the portable kernels (default 90: sm_90 SASS + PTX); the
                              Hopper kernels (csrc/*_sm90.cu, CUTLASS) are always built for sm_90a alone
  DEEPFUSE_SM90=0             build without the sm_90a CUTLASS kernels (then no nvidia-cutlass is needed; every
                              device runs the WMMA kernels)
  DEEPFUSE_BUILD_JOBS=N       parallel compile jobs
  DEEPFUSE_PTXAS_REPORT=0     do not embed ptxas -v of every kernel in _C (the CUDA resource gate,
                              tests/test_cuda_resources.py, needs it; on by default, it costs no extra compile)
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).parent.resolve()


def _cuda_build_skip_reason():
    if os.environ.get("DEEPFUSE_SKIP_CUDA", "0") not in ("", "0"):
        return "DEEPFUSE_SKIP_CUDA is set"
    if (
        shutil.which("nvcc") is None
        and not Path(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc").exists()
    ):
        return "nvcc was not found on PATH or in CUDA_HOME"
    return None


class CMakeExtension(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def run(self):
        reason = _cuda_build_skip_reason()
        if reason:
            print(f"deepfuse: building without the CUDA module deepfuse._C ({reason}); triton and torch backends only.")
            return
        super().run()

    def build_extension(self, ext):
        import pybind11

        out_dir = Path(self.get_ext_fullpath(ext.name)).parent.resolve()
        build_dir = Path(self.build_temp).resolve() / ext.name
        build_dir.mkdir(parents=True, exist_ok=True)
        nvcc = shutil.which("nvcc") or str(Path(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc"))
        config = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DCMAKE_CUDA_COMPILER={nvcc}",
            "-DCMAKE_BUILD_TYPE=Release",
            f"-DCMAKE_CUDA_ARCHITECTURES={os.environ.get('DEEPFUSE_CUDA_ARCHS', '90')}",
            f"-DDEEPFUSE_PTXAS_REPORT={'OFF' if os.environ.get('DEEPFUSE_PTXAS_REPORT') == '0' else 'ON'}",
            f"-DDEEPFUSE_SM90_KERNELS={'OFF' if os.environ.get('DEEPFUSE_SM90') == '0' else 'ON'}",
        ]
        if shutil.which("ninja"):
            config.append("-GNinja")
        jobs = os.environ.get("DEEPFUSE_BUILD_JOBS", str(os.cpu_count() or 2))
        subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build_dir), *config], check=True)
        subprocess.run(["cmake", "--build", str(build_dir), "--parallel", jobs], check=True)


# Every package under python/ is found (a new subpackage needs no edit here); the Triton kernels live in the
# top-level kernels/ folder and install as deepfuse.kernels. tests/packaging/check_wheel.sh installs the wheel.
setup(
    packages=[*find_packages(where="python"), "deepfuse.kernels"],
    package_dir={"deepfuse": "python/deepfuse", "deepfuse.kernels": "kernels"},
    ext_modules=[CMakeExtension("deepfuse._C")],
    cmdclass={"build_ext": CMakeBuild},
)
