from setuptools import find_packages, setup


def read_version():
    scope = {}
    with open('mmsparse/version.py') as f:
        exec(f.read(), scope)
    return scope['__version__']


def read_requirements(path):
    with open(path) as f:
        return [line.strip() for line in f if line.strip() and not line.startswith('#')]


setup(
    name='mmsparse',
    version=read_version(),
    description='Sparse vision attentions (BiFormer, NAT, HAT-Net, Fibottention) for mmdet and mmseg',
    long_description=open('README.md').read(),
    long_description_content_type='text/markdown',
    packages=find_packages(exclude=('configs', 'configs.*', 'tools', 'tools.*', 'tests', 'tests.*')),
    python_requires='>=3.10,<3.13',
    install_requires=['torch>=2.1'] + read_requirements('requirements/runtime.txt'),
    extras_require={'tests': read_requirements('requirements/tests.txt'),
                    'triton': read_requirements('requirements/optional.txt')},
    license='Apache-2.0',
    license_files=['LICENSE', 'NOTICE'],
    zip_safe=False,
)
