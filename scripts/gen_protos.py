"""Generate the committed Python stubs for protos/jobcontrol/v1 with grpcio-tools.

The stubs live beside their .proto files (package `jobcontrol.v1`). With `--check`
the stubs are generated into a scratch folder and compared, so CI fails when someone
edits a .proto file and forgets to regenerate.
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
PACKAGE_DIR = Path("jobcontrol") / "v1"
STUB_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def proto_files() -> list[Path]:
    return sorted((PROTO_ROOT / PACKAGE_DIR).glob("*.proto"))


def generate(out_dir: Path) -> None:
    well_known = str(resources.files("grpc_tools") / "_proto")
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(p.relative_to(PROTO_ROOT)) for p in proto_files()),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def stub_names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if p.name.endswith(STUB_SUFFIXES)}


def drift() -> list[str]:
    """Return the stub files that differ from a fresh generation."""
    with tempfile.TemporaryDirectory() as scratch:
        generate(Path(scratch))
        fresh = Path(scratch) / PACKAGE_DIR
        committed = PROTO_ROOT / PACKAGE_DIR
        names = stub_names(fresh) | stub_names(committed)
        return sorted(
            name
            for name in names
            if not (committed / name).exists()
            or not (fresh / name).exists()
            or not filecmp.cmp(committed / name, fresh / name, shallow=False)
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the stubs are stale")
    if parser.parse_args().check:
        stale = drift()
        if stale:
            print("stale generated stubs (run `make gen`):", ", ".join(stale), file=sys.stderr)
            return 1
        print("generated stubs are up to date")
        return 0
    generate(PROTO_ROOT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
