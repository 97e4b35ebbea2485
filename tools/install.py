"""Install mmsparse and its OpenMMLab stack into the current Python environment.

Run from the repository root::

    python tools/install.py

Idempotent: every step checks what is already installed and skips work that is
done. Order matters: torch before mmcv (mmcv's ops compile against it), mmcv
before mmdet/mmseg (so pip never swaps it for mmcv-lite). Every pip call runs
under one constraints file that holds ``setuptools<82`` (mmengine's ``mmdet::``
and ``mmseg::`` config inheritance imports ``pkg_resources``, which setuptools 82
removed; torch alone would pull the newest setuptools), later also the installed
torch and mmcv. Besides the runtime requirements it installs the test ones and the
``onnx`` extra (requirements/onnx.txt), which the test suite needs. mmsparse goes in
editable, with ``mmsparse/.mim`` linking the model index, configs and tools (setup.py's
``add_mim_extension``); since mim looks for that folder next to the package's
``*.dist-info`` in site-packages, which a PEP 660 editable install leaves empty, a link
``site-packages/mmsparse -> <checkout>/mmsparse`` is added there, so that
``mim search mmsparse`` lists the model zoo. The run ends by checking the result in a
fresh interpreter and exits non-zero, naming the cause, if any check fails.
"""
import argparse
import glob
import importlib.util
import os
import os.path as osp
import subprocess
import sys
import tempfile

SUPPORTED_PYTHON = ((3, 10), (3, 12))
MIN_TORCH = (2, 1)
DEFAULT_TORCH = 'torch==2.13.0'
MMCV_VERSION = '2.1.0'
# openmim is installed with --no-deps: its opendatalab -> openxlab dependency pins
# setuptools~=60.2 (below torch's >=77), rich and requests, and serves only
# `mim download` of data sets. What `mim` imports is in requirements/tests.txt.
OPENMIM = 'openmim==0.3.9'
MMCV_RUNTIME_DEPS = ('addict', 'mmengine==0.10.7', 'numpy', 'packaging', 'Pillow', 'pyyaml',
                     'yapf', 'opencv-python-headless')
REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEFAULT_WHEEL_DIR = osp.join(REPO_ROOT, '..', 'shared', 'wheels')
SETUPTOOLS = 'setuptools<82'
CONSTRAINT_FILE = osp.join(REPO_ROOT, '.torch-constraint.txt')

# The checks that end the install, each run in a fresh interpreter: (what, code).
FINAL_CHECKS = (
    ('pkg_resources (setuptools<82)', 'import pkg_resources'),
    ('mmcv compiled ops', 'import mmcv._ext; from mmcv.ops import nms, RoIAlign'),
    ('an mmseg:: base config', "from mmengine.hub import get_config; "
     "get_config('mmseg::_base_/models/upernet_r50.py')"),
    ('an mmdet:: base config', "from mmengine.hub import get_config; "
     "get_config('mmdet::_base_/models/retinanet_r50_fpn.py')"),
    ('mmsparse with mmdet and mmseg', 'import mmsparse.models, mmdet, mmseg'),
    ('mim', 'import mim.commands.test'),
    ('psutil (the stock benchmark tools)', 'import psutil'),
    ('the onnx extra', 'import onnx, onnxscript, onnxruntime'),
    ('mim search mmsparse', "from mim.commands.search import load_metadata; "
     "assert load_metadata('mmsparse').models, 'the mmsparse model index is empty'"),
)
# The requirement files installed, in this order.
REQUIREMENTS = ('runtime.txt', 'tests.txt', 'onnx.txt')


def log(msg):
    print(f'[mmsparse install] {msg}', flush=True)


def fail(msg):
    sys.stderr.write(f'[mmsparse install] ERROR: {msg}\n')
    sys.exit(1)


def write_constraints(*pins):
    """(Re)write the constraints file every pip call uses: ``setuptools<82`` and ``pins``."""
    with open(CONSTRAINT_FILE, 'w') as f:
        f.write('\n'.join((SETUPTOOLS, ) + pins) + '\n')


def pip(*args, env=None):
    cmd = [sys.executable, '-m', 'pip', 'install', '--no-input', '-c', CONSTRAINT_FILE, *args]
    log(' '.join(cmd))
    subprocess.check_call(cmd, env=env)


def run_python(code):
    """Run ``code`` in a fresh interpreter; return the ``CompletedProcess``.

    It runs outside the checkout: from its root, ``import mmsparse`` and mim's distribution
    lookup would find the checkout's ``mmsparse`` and ``mmsparse.egg-info`` through the
    working directory, not the installed package.
    """
    return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          cwd=tempfile.gettempdir())


def probe(code):
    """Run ``code`` in a fresh interpreter; return its stripped stdout or None on failure."""
    res = run_python(code)
    return res.stdout.strip() if res.returncode == 0 else None


def last_line(text):
    """The last non-empty line of ``text`` (a traceback's exception line)."""
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else '(no output)'


def verify_stack():
    """Run :data:`FINAL_CHECKS` in fresh interpreters; fail naming every check that broke."""
    failures = []
    for what, code in FINAL_CHECKS:
        res = run_python(code)
        if res.returncode != 0:
            failures.append(f'{what}: {last_line(res.stderr)}')
        else:
            log(f'verified: {what}')
    if failures:
        fail('the installed stack does not work:\n  ' + '\n  '.join(failures))


def parse_version(text):
    parts = []
    for piece in text.split('+')[0].split('.')[:3]:
        digits = ''.join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def check_python():
    lo, hi = SUPPORTED_PYTHON
    if not lo <= sys.version_info[:2] <= hi:
        fail(f'Python {sys.version.split()[0]} is not supported; mmsparse needs '
             f'Python {lo[0]}.{lo[1]} to {hi[0]}.{hi[1]} (mmcv {MMCV_VERSION} and mmdet 3.3 '
             'do not build or import elsewhere).')


def ensure_torch():
    version = probe('import torch; print(torch.__version__)')
    if version is None:
        pip(DEFAULT_TORCH)
        version = probe('import torch; print(torch.__version__)')
        if version is None:
            fail(f'torch could not be imported after installing {DEFAULT_TORCH}.')
    if parse_version(version)[:2] < MIN_TORCH:
        fail(f'torch {version} is installed but mmsparse needs torch >= '
             f'{MIN_TORCH[0]}.{MIN_TORCH[1]}; upgrade it (e.g. pip install {DEFAULT_TORCH}).')
    log(f'torch {version}: keeping the installed build')
    return version


def mmcv_with_ops_installed():
    code = ('import mmcv, mmcv._ext; from mmcv.ops import nms, RoIAlign; '
            'print(mmcv.__version__)')
    return probe(code) == MMCV_VERSION


def find_prebuilt_mmcv(wheel_dir):
    tag = 'cp%d%d' % tuple(sys.version_info[:2])
    pattern = osp.join(wheel_dir, f'mmcv-{MMCV_VERSION}-{tag}-{tag}-*.whl')
    wheels = sorted(glob.glob(pattern))
    return wheels[0] if wheels else None


def ensure_mmcv(wheel_dir):
    # mmcv's own runtime dependencies, installed first so the import probe can tell a
    # working wheel from a broken one.
    pip(*MMCV_RUNTIME_DEPS)
    if mmcv_with_ops_installed():
        log(f'mmcv {MMCV_VERSION} with compiled ops already installed')
        return
    wheel = find_prebuilt_mmcv(wheel_dir)
    if wheel is not None:
        log(f'installing prebuilt mmcv wheel {wheel}')
        pip('--no-deps', '--force-reinstall', wheel)
        if mmcv_with_ops_installed():
            return
        log('the prebuilt wheel does not import with its ops here; building from source '
            '(about 20 minutes on 2 cores)')
    else:
        log(f'no prebuilt mmcv wheel for this Python in {wheel_dir}; building from source '
            '(about 20 minutes on 2 cores)')
    env = dict(os.environ, MMCV_WITH_OPS='1', MAX_JOBS=os.environ.get('MAX_JOBS', '2'))
    pip('ninja', 'psutil')
    pip('--no-build-isolation', '--no-binary', 'mmcv', '--no-deps', '--force-reinstall',
        '--no-cache-dir', f'mmcv=={MMCV_VERSION}', env=env)
    if not mmcv_with_ops_installed():
        fail(f'mmcv {MMCV_VERSION} was installed but mmcv._ext does not import; '
             'check the compiler output above.')


def ensure_triton():
    # On GPU machines torch pins its own triton build: never replace it.
    if importlib.util.find_spec('triton') is not None or probe('import triton') is not None:
        log('triton already installed: keeping it')
        return
    pip('triton')


def requirement_args():
    """The ``-r FILE`` arguments of :data:`REQUIREMENTS` for one pip call."""
    args = []
    for name in REQUIREMENTS:
        args += ['-r', osp.join(REPO_ROOT, 'requirements', name)]
    return args


def link_package_for_mim():
    """Make the folder where mim looks for ``mmsparse/.mim`` point to the checkout's package.

    mim (``mim.utils.get_installed_path``) takes the folder of the installed distribution
    (site-packages for a ``*.dist-info``) joined with the package name; a PEP 660 editable
    install imports mmsparse through a finder and leaves that folder absent. The link holds
    the very files the finder imports. A real folder there (a normal install) is kept.
    """
    path = probe('from mim.utils import get_installed_path; '
                 "print(get_installed_path('mmsparse'))")
    if path is None:
        fail('mim cannot find the installed mmsparse distribution (mim.utils.get_installed_path).')
    package = osp.join(REPO_ROOT, 'mmsparse')
    if osp.islink(path) and osp.realpath(path) != osp.realpath(package):
        os.remove(path)  # a link to another checkout, left by an earlier install
    if not osp.lexists(path):
        os.symlink(package, path)
        log(f'linked {path} -> {package} for mim')


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--wheel-dir', default=os.environ.get('MMSPARSE_WHEEL_DIR', DEFAULT_WHEEL_DIR),
                        help='folder with a prebuilt mmcv wheel (default: ../shared/wheels)')
    args = parser.parse_args()

    check_python()
    write_constraints()
    try:
        pip(SETUPTOOLS, 'wheel')
        torch_version = ensure_torch()
        # From here on the installed torch is pinned too, so no dependency swaps it.
        write_constraints(f'torch=={torch_version}')
        ensure_mmcv(args.wheel_dir)
        write_constraints(f'torch=={torch_version}', f'mmcv=={MMCV_VERSION}')
        pip(*requirement_args())
        pip('--no-deps', OPENMIM)
        ensure_triton()
        pip('--no-deps', '--no-build-isolation', '-e', REPO_ROOT)
    finally:
        os.remove(CONSTRAINT_FILE)
    link_package_for_mim()
    verify_stack()
    version = probe('import mmsparse, mmdet, mmseg, mmcv, setuptools; '
                    'print(mmsparse.__version__, mmdet.__version__, mmseg.__version__, '
                    'mmcv.__version__, setuptools.__version__)')
    log(f'done: mmsparse, mmdet, mmseg, mmcv, setuptools = {version}')


if __name__ == '__main__':
    main()
