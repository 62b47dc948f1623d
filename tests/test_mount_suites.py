"""Independent integrity exercisers pass on a cowfs mount as they do on a native directory."""

from __future__ import annotations

import re
import subprocess

import pytest

from conftest import needs_fuse

pytestmark = needs_fuse

FIO = ["fio", "--name=verify", "--rw=randwrite", "--bs=4k", "--size=16m", "--verify=crc32c", "--do_verify=1",
       "--verify_fatal=1", "--numjobs=2", "--ioengine=psync", "--group_reporting"]
STRESS = ["stress-ng", "--hdd", "2", "--hdd-ops", "300", "--rename", "1", "--rename-ops", "1000", "--dir", "1",
          "--dir-ops", "50", "--seek", "1", "--seek-ops", "2000", "--verify", "--metrics-brief"]


@pytest.fixture
def places(workspace, tmp_path):
    native = tmp_path / "native"
    native.mkdir()
    # With xattrs on, as the native directory has them: CPython's xattr tests must run on both.
    return {"native": native, "cowfs": workspace.mount(options=("--xattrs",))}


@pytest.mark.parametrize("kind", ["native", "cowfs"])
def test_fio_write_verify(places, kind):
    # fio leaves its verify-state files in the working directory: keep them in the test's own.
    result = subprocess.run(FIO + [f"--directory={places[kind]}"], capture_output=True, text=True, timeout=300,
                            cwd=places[kind])
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"err= 0", result.stdout), result.stdout
    assert "verify failed" not in result.stdout + result.stderr


@pytest.mark.parametrize("kind", ["native", "cowfs"])
def test_stress_ng_filesystem_stressors(places, kind):
    result = subprocess.run(STRESS + ["--temp-path", str(places[kind])], capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "successful run completed" in output
    assert not re.search(r"\bfail(ed)?\b", output.replace("0 failed", "")), output


STDLIB_TESTS = ["test_shutil", "test_glob", "test_tempfile", "test_fileinput", "test_zipfile", "test_pathlib",
                "test_tarfile"]


def run_stdlib_tests(directory) -> tuple[int, str]:
    """CPython's own file-heavy test modules, with their scratch space in ``directory``."""
    import os
    import sys

    env = {**os.environ, "TMPDIR": str(directory)}
    result = subprocess.run([sys.executable, "-m", "test", *STDLIB_TESTS, "-q"], cwd=directory, env=env,
                            capture_output=True, text=True, timeout=600)
    return result.returncode, result.stdout + result.stderr


def test_cpython_file_tests_pass_as_on_native(places):
    native_code, native_out = run_stdlib_tests(places["native"])
    cowfs_code, cowfs_out = run_stdlib_tests(places["cowfs"])
    assert native_code == 0, native_out
    assert cowfs_code == 0, cowfs_out
    counts = [re.search(r"Total tests: (run=[\d,]+.*)", out).group(1) for out in (native_out, cowfs_out)]
    assert counts[0] == counts[1]
