"""Where the op tests run, and whether the Triton kernels can run there; the skip markers of the kernel tests.

Without a GPU the Triton kernels run in the CPU interpreter. Triton chooses interpreter or
compiler when it is first imported (its own ``tl.zeros``/``tl.sum`` are jitted then), so
this module sets ``TRITON_INTERPRET=1`` before anything imports triton; a test module
imports it before anything that may import triton. If triton was already imported in
compiled mode (e.g. by an earlier module), the kernel tests skip and say so. With CUDA the
same tests run the compiled kernels on the GPU.
"""
import os
import sys

import torch

ON_GPU = torch.cuda.is_available()   # importing torch does not import triton
if not ON_GPU and 'triton' not in sys.modules:
    os.environ['TRITON_INTERPRET'] = '1'

import pytest  # noqa: E402

from mmsparse.ops._dispatch import triton_available  # noqa: E402

DEVICE = 'cuda' if ON_GPU else 'cpu'


def why_kernels_cannot_run():
    """Why the Triton kernels cannot run in this process, if they cannot.

    They can when triton is installed and either there is a GPU (compiled kernels) or
    triton was imported in interpreter mode (``TRITON_INTERPRET=1``, its own functions
    interpreted).

    Returns:
        str | None: The reason, or None when the kernels can run.
    """
    if not triton_available():
        return 'triton is not installed'
    if ON_GPU:
        return None
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction
    if os.environ.get('TRITON_INTERPRET') != '1' or not isinstance(tl.zeros, InterpretedFunction):
        return ('no GPU, and triton was imported before tests/test_ops/kernels.py without '
                'TRITON_INTERPRET=1; rerun with TRITON_INTERPRET=1')
    return None


# Triton's mode is fixed once it is imported, so the answer is worked out once.
WHY_NO_KERNELS = why_kernels_cannot_run()
KERNELS_RUNNABLE = WHY_NO_KERNELS is None
needs_triton = pytest.mark.skipif(not triton_available(), reason='triton is not installed')
needs_kernels = pytest.mark.skipif(not KERNELS_RUNNABLE,
                                   reason=f'the Triton kernels cannot run here: {WHY_NO_KERNELS}')
