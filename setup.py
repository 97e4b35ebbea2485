import os
import os.path as osp
import shutil
import sys

from setuptools import find_packages, setup

REPO_ROOT = osp.dirname(osp.abspath(__file__))
# What mim reads from <package>/.mim: `mim search` the model index, `mim train/test/run`
# the configs and tools (as mmdet and mmseg ship them).
MIM_FILES = ('model-index.yml', 'configs', 'tools')
MIM_DIR = osp.join('mmsparse', '.mim')
# setup.py commands of an editable install (PEP 660 `editable_wheel`, legacy `develop`)
# link the checkout; the commands that build a distribution copy it.
EDITABLE_COMMANDS = ('develop', 'editable_wheel')
DISTRIBUTION_COMMANDS = ('sdist', 'bdist_wheel', 'build', 'build_py', 'install')


def read_version():
    scope = {}
    with open('mmsparse/version.py') as f:
        exec(f.read(), scope)
    return scope['__version__']


def read_requirements(path):
    with open(path) as f:
        return [line.strip() for line in f if line.strip() and not line.startswith('#')]


def mim_install_mode(argv):
    """``'symlink'`` for an editable install, ``'copy'`` for a distribution, else None."""
    if any(cmd in argv for cmd in EDITABLE_COMMANDS):
        return 'symlink'
    if any(cmd in argv for cmd in DISTRIBUTION_COMMANDS):
        return 'copy'
    return None


def add_mim_extension(argv=None, root=REPO_ROOT):
    """Fill ``mmsparse/.mim`` with :data:`MIM_FILES`: links to the checkout or copies.

    An editable install links them, so edits to configs and tools show at once; a wheel
    or sdist must carry real files, which ``package_data`` then picks up. Commands that
    neither install nor build (``egg_info``, ``--help``) leave the folder as it is.
    """
    mode = mim_install_mode(sys.argv if argv is None else argv)
    if mode is None:
        return
    mim_dir = osp.join(root, MIM_DIR)
    os.makedirs(mim_dir, exist_ok=True)
    for name in MIM_FILES:
        src, dst = osp.join(root, name), osp.join(mim_dir, name)
        if osp.islink(dst) or osp.isfile(dst):
            os.remove(dst)
        elif osp.isdir(dst):
            shutil.rmtree(dst)
        if mode == 'symlink':
            os.symlink(osp.relpath(src, mim_dir), dst)
        elif osp.isdir(src):
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns('__pycache__', '*.pyc'))
        else:
            shutil.copyfile(src, dst)


if __name__ == '__main__':
    add_mim_extension()
    setup(
        name='mmsparse',
        version=read_version(),
        description='Sparse vision attentions (BiFormer, NAT, HAT-Net, Fibottention) for mmdet and mmseg',
        long_description=open('README.md').read(),
        long_description_content_type='text/markdown',
        packages=find_packages(exclude=('configs', 'configs.*', 'tools', 'tools.*', 'tests', 'tests.*')),
        # the copied .mim tree of a wheel (setuptools >= 62.3 expands '**')
        package_data={'mmsparse': ['.mim/model-index.yml', '.mim/configs/**/*', '.mim/tools/**/*']},
        python_requires='>=3.10,<3.13',
        install_requires=['torch>=2.1'] + read_requirements('requirements/runtime.txt'),
        extras_require={'tests': read_requirements('requirements/tests.txt'),
                        'triton': read_requirements('requirements/optional.txt'),
                        'onnx': read_requirements('requirements/onnx.txt')},
        license='Apache-2.0',
        license_files=['LICENSE', 'NOTICE'],
        zip_safe=False,
    )
