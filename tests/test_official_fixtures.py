"""The official-output fixtures ship with the repository (tests/data/official).

A missing or altered fixture must fail here, with its path, instead of letting the
reproduction tests that load it disappear.
"""
import hashlib
import os
import os.path as osp
import re

import pytest

from .conftest import (FIXTURES_ENV, OFFICIAL_FIXTURES, OFFICIAL_FIXTURES_DIR, REPO_ROOT,
                       official_fixture_path)

TESTS_DIR = osp.join(REPO_ROOT, 'tests')
README = osp.join(OFFICIAL_FIXTURES_DIR, 'README.md')
CHECKSUMS = osp.join(OFFICIAL_FIXTURES_DIR, 'SHA256SUMS')


def fixture_names_in_tests():
    """``{name: [test files]}`` for every ``'<name>.pt'`` string literal in tests/**/*.py."""
    found = {}
    for folder, _, files in os.walk(TESTS_DIR):
        for file in files:
            if not file.endswith('.py') or file in ('conftest.py', osp.basename(__file__)):
                continue
            path = osp.join(folder, file)
            with open(path) as f:
                for name in re.findall(r"""['"]([\w.-]+\.pt)['"]""", f.read()):
                    found.setdefault(name, []).append(osp.relpath(path, REPO_ROOT))
    return found


def read_checksums():
    with open(CHECKSUMS) as f:
        return {name: digest for digest, name in (line.split() for line in f if line.strip())}


def test_every_fixture_a_test_names_is_known_and_present():
    used = fixture_names_in_tests()
    assert used, 'no test names an official fixture: the scan is broken'
    unknown = {name: files for name, files in used.items() if name not in OFFICIAL_FIXTURES}
    assert not unknown, f'tests load fixtures missing from OFFICIAL_FIXTURES (tests/conftest.py): {unknown}'
    missing = [osp.join(OFFICIAL_FIXTURES_DIR, name) for name in used
               if not osp.isfile(osp.join(OFFICIAL_FIXTURES_DIR, name))]
    assert not missing, f'official fixtures missing from the repository: {missing}'


@pytest.mark.parametrize('name', OFFICIAL_FIXTURES)
def test_fixture_is_in_the_repository_unaltered(name):
    path = osp.join(OFFICIAL_FIXTURES_DIR, name)
    assert osp.isfile(path), f'official fixture {path} is missing'
    expected = read_checksums().get(name)
    assert expected, f'{name} has no line in {CHECKSUMS}'
    with open(path, 'rb') as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    assert digest == expected, f'{path} differs from the recorded fixture (sha256 {digest} != {expected})'


def test_fixture_list_matches_the_folder_and_the_readme():
    on_disk = sorted(f for f in os.listdir(OFFICIAL_FIXTURES_DIR) if f.endswith('.pt'))
    assert on_disk == sorted(OFFICIAL_FIXTURES), 'tests/data/official and OFFICIAL_FIXTURES disagree'
    assert sorted(read_checksums()) == sorted(OFFICIAL_FIXTURES)
    with open(README) as f:
        readme = f.read()
    undocumented = [name for name in OFFICIAL_FIXTURES if f'`{name}`' not in readme]
    assert not undocumented, f'{README} does not describe {undocumented}'


def test_missing_folder_or_file_fails_with_the_path(tmp_path, monkeypatch):
    """Never a skip: the loader fails the test and names what is missing."""
    absent = tmp_path / 'absent'
    monkeypatch.setenv(FIXTURES_ENV, str(absent))
    with pytest.raises(pytest.fail.Exception, match=re.escape(str(absent))):
        official_fixture_path('nat_op.pt')
    monkeypatch.setenv(FIXTURES_ENV, str(tmp_path))
    with pytest.raises(pytest.fail.Exception, match=re.escape(str(tmp_path / 'nat_op.pt'))):
        official_fixture_path('nat_op.pt')
    with pytest.raises(pytest.fail.Exception, match='not a known official fixture'):
        official_fixture_path('other.pt')


def test_environment_variable_overrides_the_folder(tmp_path, monkeypatch):
    (tmp_path / 'nat_op.pt').write_bytes(b'')
    monkeypatch.setenv(FIXTURES_ENV, str(tmp_path))
    assert official_fixture_path('nat_op.pt') == str(tmp_path / 'nat_op.pt')
    monkeypatch.delenv(FIXTURES_ENV)
    assert official_fixture_path('nat_op.pt') == osp.join(OFFICIAL_FIXTURES_DIR, 'nat_op.pt')
