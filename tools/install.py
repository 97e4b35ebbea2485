"""Install mmsparse and its OpenMMLab stack into the current Python environment.

Run from the repository root::

    python tools/install.py

Idempotent: every step checks what is already installed and skips work that is
done. Order matters: ``setuptools<82`` first (mmengine's ``mmdet::`` config
inheritance needs ``pkg_resources``), torch before mmcv (mmcv's ops compile
against it), mmcv before mmdet/mmseg (so pip never swaps it for mmcv-lite).
"""
import argparse
import glob
import importlib.util
import os
import os.path as osp
import subprocess
import sys

SUPPORTED_PYTHON = ((3, 10), (3, 12))
MIN_TORCH = (2, 1)
DEFAULT_TORCH = 'torch==2.13.0'
MMCV_VERSION = '2.1.0'
MMCV_RUNTIME_DEPS = ('addict', 'mmengine==0.10.7', 'numpy', 'packaging', 'Pillow', 'pyyaml',
                     'yapf', 'opencv-python-headless')
REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEFAULT_WHEEL_DIR = osp.join(REPO_ROOT, '..', 'shared', 'wheels')


def log(msg):
    print(f'[mmsparse install] {msg}', flush=True)


def fail(msg):
    sys.stderr.write(f'[mmsparse install] ERROR: {msg}\n')
    sys.exit(1)


def pip(*args, env=None):
    cmd = [sys.executable, '-m', 'pip', 'install', '--no-input', *args]
    log(' '.join(cmd))
    subprocess.check_call(cmd, env=env)


def probe(code):
    """Run ``code`` in a fresh interpreter; return its stripped stdout or None on failure."""
    res = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    return res.stdout.strip() if res.returncode == 0 else None


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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--wheel-dir', default=os.environ.get('MMSPARSE_WHEEL_DIR', DEFAULT_WHEEL_DIR),
                        help='folder with a prebuilt mmcv wheel (default: ../shared/wheels)')
    args = parser.parse_args()

    check_python()
    pip('setuptools<82', 'wheel')
    torch_version = ensure_torch()
    ensure_mmcv(args.wheel_dir)
    # Constrain torch to the installed build so no dependency upgrades it.
    constraint = osp.join(REPO_ROOT, '.torch-constraint.txt')
    with open(constraint, 'w') as f:
        f.write(f'torch=={torch_version}\nmmcv=={MMCV_VERSION}\nsetuptools<82\n')
    try:
        pip('-c', constraint, '-r', osp.join(REPO_ROOT, 'requirements', 'runtime.txt'),
            '-r', osp.join(REPO_ROOT, 'requirements', 'tests.txt'))
        ensure_triton()
        pip('-c', constraint, '--no-deps', '--no-build-isolation', '-e', REPO_ROOT)
    finally:
        os.remove(constraint)
    version = probe('import mmsparse, mmdet, mmseg, mmcv; '
                    'print(mmsparse.__version__, mmdet.__version__, mmseg.__version__, mmcv.__version__)')
    if version is None:
        fail('the stack does not import after installation.')
    log(f'done: mmsparse, mmdet, mmseg, mmcv = {version}')


if __name__ == '__main__':
    main()
