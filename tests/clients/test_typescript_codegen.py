"""The committed TypeScript client code (clients/typescript/src/gen/) is what
`buf generate` makes from protos/ with buf.gen.yaml and the pinned protoc-gen-es.

After a .proto change: `npm --prefix clients/typescript run gen` (needs `make install`).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "clients" / "typescript"
GEN = Path("clients") / "typescript" / "src" / "gen"
BUF = ROOT / "node_modules" / ".bin" / "buf"
PLUGIN = CLIENT / "node_modules" / ".bin" / "protoc-gen-es"


def files_under(directory: Path) -> dict[str, bytes]:
    return {
        path.relative_to(directory).as_posix(): path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def test_generated_typescript_matches_the_protos(tmp_path: Path) -> None:
    for tool in (BUF, PLUGIN):
        if not tool.exists():
            pytest.fail(f"{tool.relative_to(ROOT)} is missing: run `make install` (npm ci)")
    if shutil.which("node") is None:
        pytest.fail("node is not on PATH: run `make install`")
    result = subprocess.run(
        [str(BUF), "generate", "--template", "buf.gen.yaml", "--output", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr

    fresh = files_under(tmp_path / GEN)
    committed = files_under(ROOT / GEN)
    assert fresh, "buf generate wrote nothing"
    assert sorted(committed) == sorted(fresh), (
        "clients/typescript/src/gen/ has other files than buf generate makes: "
        "run `npm --prefix clients/typescript run gen`"
    )
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, (
        f"clients/typescript/src/gen/ is stale ({', '.join(stale)}): "
        "run `npm --prefix clients/typescript run gen`"
    )
