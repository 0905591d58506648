"""`import corral` defaults OpenMP's wait policy to PASSIVE, and keeps a user's choice."""

import os
import subprocess
import sys

PRINT_POLICY = "import corral, os; print(os.environ.get('OMP_WAIT_POLICY'))"


def _run(code: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip()


def test_import_corral_sets_passive_wait_policy() -> None:
    assert _run(PRINT_POLICY) == "PASSIVE"


def test_a_policy_the_user_set_is_kept() -> None:
    assert _run(PRINT_POLICY, OMP_WAIT_POLICY="ACTIVE") == "ACTIVE"


def test_torch_imported_first_keeps_its_default() -> None:
    assert _run("import torch; " + PRINT_POLICY) == "None"
