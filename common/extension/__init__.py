"""A C++ extension: `templates_ext::swish`, x * sigmoid(x) as a compiled torch op, for CPU
(swish.cpp) and, where torch sees a GPU, CUDA (swish_cuda.cu).

Why C++: eager `x * torch.sigmoid(x)` runs two kernels (sigmoid, then multiply), writes an
intermediate the size of x, and autograd keeps both x and sigmoid(x) for backward, whose
formula is a few more kernels. The compiled op reads x once and writes y once; its backward
reads grad and x and writes the gradient once, recomputing the sigmoid (a few flops are
cheaper than a trip to memory), so only x is saved. `nn.SiLU` is torch's own fused kernel for
the same function: this is how such a kernel is written and registered outside torch.

How it is registered: swish.cpp declares the schemas with TORCH_LIBRARY and the kernels with
TORCH_LIBRARY_IMPL (per device); this file adds what is simpler in Python, a fake (shape-only)
implementation of each op for torch.compile and torch.export, and the autograd formula of
`swish` in terms of `swish_backward`. torch.compile and `torch.library.opcheck` then see one op,
as for the pure-Python custom op `templates::swish` in common/ops.py.

Nothing is built on import: the first `load()` (called by `swish` and `CppSwish()`) compiles
into `$DATA_DIR/extensions/` (default `data/extensions/`), once per machine (~15 s on 2 CPU
cores, ~1 min with the CUDA kernels); later processes load the cached library.
"""

import logging
import os
import shutil
from pathlib import Path

import torch
from torch import nn

from common.errors import UserError, first_line
from common.resolvers import REPO_ROOT

HERE = Path(__file__).resolve().parent
_loaded = False

# The compiler flags that make ATen's `Vectorized` (swish.cpp) as wide as torch's own CPU kernels
# run on this machine: torch builds its kernels for several widths and picks one at run time;
# ours is built for the CPU it is built on (then ~10x faster than a scalar loop under AVX-512).
SIMD_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma"],
    "AVX2": ["-mavx2", "-mfma", "-mf16c"],
}


def build_dir(name: str) -> Path:
    """Where extension `name` is compiled and cached: under the data dir, like datasets."""
    return Path(os.environ.get("DATA_DIR") or REPO_ROOT / "data") / "extensions" / name


def cpu_flags() -> list[str]:
    """-O3, and the SIMD width torch found on this CPU (none, ATen's scalar fallback, elsewhere)."""
    capability = torch.backends.cpu.get_cpu_capability()  # "AVX512", "AVX2", "DEFAULT", ...
    if capability not in SIMD_FLAGS:
        return ["-O3"]
    defines = [f"-DCPU_CAPABILITY={capability}", f"-DCPU_CAPABILITY_{capability}"]
    return ["-O3", *defines, *SIMD_FLAGS[capability]]


def compile_error(err: BaseException) -> str:
    """The compiler's first `error:` line out of torch's build failure (which holds the whole
    log), else the failure's first line."""
    lines = [line.strip() for line in str(err).splitlines()]
    return next((line for line in lines if "error:" in line), first_line(err))


def compile_extension(name: str, sources: list[Path], cuda: bool = False) -> None:
    """Compile `sources` into a library of torch ops named `name` and load it into torch.ops;
    a missing tool or a compile error is one UserError line."""
    # Imported here, not at the top: its import reads CUDA_HOME (see _cuda_env) and, where no
    # GPU is, warns that it found no CUDA runtime, which a CPU build does not need.
    log = logging.getLogger("torch.utils.cpp_extension")
    level = log.level
    if not cuda:
        log.setLevel(logging.ERROR)
    from torch.utils import cpp_extension

    log.setLevel(level)
    compiler = os.environ.get("CXX", "c++")  # what torch's build calls
    if shutil.which(compiler) is None:
        raise UserError(
            f"building the C++ extension needs a C++ compiler, and `{compiler}` is not on PATH "
            "(apt install g++, or set CXX)"
        )
    if not cpp_extension.is_ninja_available():
        raise UserError(
            "building the C++ extension needs ninja, and it is not on PATH "
            "(apt install ninja-build, or pip install ninja and put the venv's bin/ on PATH)"
        )
    if cuda and not Path(cpp_extension.CUDA_HOME or "", "bin", "nvcc").exists():
        raise UserError(
            f"building the CUDA kernels needs nvcc under CUDA_HOME={cpp_extension.CUDA_HOME} "
            "(set CUDA_HOME to the CUDA toolkit)"
        )
    out = build_dir(name)
    out.mkdir(parents=True, exist_ok=True)
    library = out / f"{name}.so"
    if not library.exists() or max(s.stat().st_mtime for s in sources) > library.stat().st_mtime:
        print(f"building the C++ extension {name} (once, up to a minute) in {out}", flush=True)
    try:
        cpp_extension.load(
            name=name,
            sources=[str(s) for s in sources],
            build_directory=str(out),
            extra_cflags=cpu_flags(),
            extra_cuda_cflags=["-O3"],
            is_python_module=False,  # a library of torch ops, loaded with torch.ops.load_library
        )
    except (RuntimeError, OSError) as err:
        raise UserError(
            f"building the C++ extension {name} failed: {compile_error(err)} "
            f"(the whole log: ninja -C {out})"
        ) from err


def _cuda_env() -> None:
    """nvcc's settings, unless the user chose them: on this image torch guesses
    CUDA_HOME=/usr/local (from an nvcc wrapper in /usr/local/bin) and the link fails; and
    compiling for this GPU's architecture alone is the quickest build."""
    if "CUDA_HOME" not in os.environ and Path("/usr/local/cuda/bin/nvcc").exists():
        os.environ["CUDA_HOME"] = "/usr/local/cuda"
    if "TORCH_CUDA_ARCH_LIST" not in os.environ:
        major, minor = torch.cuda.get_device_capability()
        os.environ["TORCH_CUDA_ARCH_LIST"] = f"{major}.{minor}"
    from torch.utils import cpp_extension

    # cpp_extension reads CUDA_HOME once, when first imported (torch.compile's CPU backend
    # imports it too, maybe before us); torch._inductor re-points it the same way.
    if os.environ.get("CUDA_HOME") and cpp_extension.CUDA_HOME != os.environ["CUDA_HOME"]:
        cpp_extension.CUDA_HOME = os.environ["CUDA_HOME"]


def load() -> None:
    """Build the ops (the first time on this machine), load them and register their fake and
    autograd implementations. Idempotent; call it before `torch.compile` traces a model."""
    global _loaded
    if _loaded:
        return
    # One build per SIMD width (the flags target this CPU) and per CUDA or not, so machines
    # sharing a data dir never load a library built for another.
    simd = torch.backends.cpu.get_cpu_capability().lower()
    name, sources, cuda = f"templates_ext_{simd}", [HERE / "swish.cpp"], torch.cuda.is_available()
    if cuda:
        _cuda_env()
        name, sources = f"{name}_cuda", [*sources, HERE / "swish_cuda.cu"]
    compile_extension(name, sources, cuda)
    torch.library.register_fake("templates_ext::swish", _fake)
    torch.library.register_fake("templates_ext::swish_backward", lambda grad, x: _fake(x))
    torch.library.register_autograd("templates_ext::swish", _backward, setup_context=_setup_context)
    _loaded = True


def _fake(x: torch.Tensor) -> torch.Tensor:
    # What the kernels allocate: x's strides when x is dense (channels_last stays channels_last),
    # else contiguous; opcheck compares the two.
    return torch.empty_like(x)


def _setup_context(ctx, inputs, output) -> None:
    (x,) = inputs
    ctx.save_for_backward(x)  # x only: swish_backward recomputes the sigmoid


def _backward(ctx, grad: torch.Tensor) -> torch.Tensor:
    (x,) = ctx.saved_tensors
    return torch.ops.templates_ext.swish_backward(grad, x)


def swish(x: torch.Tensor) -> torch.Tensor:
    """x * sigmoid(x) through the C++ op (built on the first call)."""
    load()
    return torch.ops.templates_ext.swish(x)


class CppSwish(nn.Module):
    """The C++ swish as an activation layer (`nn.Sequential(..., CppSwish(), ...)`); builds the
    extension when constructed, so a compiled or timed forward never pays for it."""

    def __init__(self):
        super().__init__()
        load()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.templates_ext.swish(x)
