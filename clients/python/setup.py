"""Build hook of driftd-client: generates the protobuf modules at build time.

The single source of truth for the API is the repository's proto file
(``../../proto/driftd/v1/driftd.proto``, or the directory named by the
environment variable ``DRIFTD_PROTO_ROOT``). ``build_py`` compiles it, and
every proto file it imports from the same root, with ``grpc_tools.protoc``
into ``driftd_client/_proto/`` and rewrites the generated absolute imports
(``from inference import open_inference_pb2``) into package imports, so the
generated top-level names ``driftd`` and ``inference`` never shadow anything
on the user's ``sys.path``.

Only message modules (``*_pb2.py``) are generated: the client calls the four
RPCs through ``grpc.Channel`` directly, because generated ``*_pb2_grpc.py``
files refuse to import under a grpcio older than the grpcio-tools that built
them, which would couple the user's grpcio to our build environment.

The generated ``*_pb2.py`` do check their protobuf runtime (it must not be
older than the protoc that generated them), so the protobuf requirement of
the package is computed here from the protoc in the build environment.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
PROTO_ROOT = Path(os.environ.get("DRIFTD_PROTO_ROOT", HERE / ".." / ".." / "proto")).resolve()
ENTRY = "driftd/v1/driftd.proto"
PACKAGE = "driftd_client._proto"
# Used when the protoc version cannot be determined (no grpc_tools while
# only metadata is computed): the first protobuf with a stable Python API
# that current grpcio supports.
PROTOBUF_FLOOR = "4.21"

_IMPORT_RE = re.compile(r'^\s*import\s+(?:public\s+|weak\s+)?"([^"]+)"\s*;', re.MULTILINE)


def _proto_closure() -> list[str]:
    """ENTRY plus every proto it imports (transitively) from PROTO_ROOT.

    Imports that are not under PROTO_ROOT (google/protobuf/*.proto) come
    from grpc_tools' bundled includes and the protobuf runtime.
    """
    if not (PROTO_ROOT / ENTRY).is_file():
        raise SystemExit(
            f"driftd-client: proto file {PROTO_ROOT / ENTRY} not found. Build from a "
            "checkout of the driftd repository (pip install clients/python), or set "
            "DRIFTD_PROTO_ROOT to the directory that contains driftd/v1/driftd.proto."
        )
    seen: list[str] = []
    todo = [ENTRY]
    while todo:
        rel = todo.pop()
        if rel in seen:
            continue
        seen.append(rel)
        text = (PROTO_ROOT / rel).read_text(encoding="utf-8")
        todo.extend(dep for dep in _IMPORT_RE.findall(text) if (PROTO_ROOT / dep).is_file())
    return sorted(seen)


def _protoc(out_dir: Path, files: list[str]) -> None:
    try:
        from grpc_tools import protoc
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise SystemExit(
            "driftd-client: grpcio-tools is needed to build this package (it compiles "
            "the proto files). It is a build requirement, so a normal `pip install` "
            "provides it; with --no-build-isolation, `pip install grpcio-tools` first."
        ) from e
    import importlib.resources

    well_known = importlib.resources.files("grpc_tools") / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        *files,
    ]
    if protoc.main(args) != 0:
        raise SystemExit(f"driftd-client: protoc failed: {' '.join(args)}")


def _rewrite_imports(text: str, tops: set[str]) -> str:
    """Turns generated absolute imports of our own protos into package imports."""
    alternation = "|".join(sorted(map(re.escape, tops)))
    text = re.sub(
        rf"^from ((?:{alternation})(?:\.\w+)*) import (\w+_pb2)\b",
        rf"from {PACKAGE}.\1 import \2",
        text,
        flags=re.MULTILINE,
    )
    # Protos at the root of the include path generate `import x_pb2 as ...`.
    return re.sub(r"^import (\w+_pb2)\b", rf"from {PACKAGE} import \1", text, flags=re.MULTILINE)


def generate(package_dir: Path) -> list[Path]:
    """Writes the generated modules into package_dir (driftd_client/_proto).

    Returns the files written.
    """
    files = _proto_closure()
    tops = {f.split("/")[0].removesuffix(".proto") for f in files}
    if package_dir.exists():
        shutil.rmtree(package_dir)  # no stale modules of removed protos
    written: list[Path] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        _protoc(tmp_path, files)
        for src in sorted(tmp_path.rglob("*")):
            if src.suffix not in (".py", ".pyi"):
                continue
            dst = package_dir / src.relative_to(tmp_path)
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_text(_rewrite_imports(src.read_text(encoding="utf-8"), tops), encoding="utf-8")
            written.append(dst)
    # Regular packages (not namespace packages), so imports work everywhere.
    for d in [package_dir, *[p for p in package_dir.rglob("*") if p.is_dir()]]:
        init = d / "__init__.py"
        if not init.exists():
            init.write_text('"""Generated from driftd\'s proto files at build time."""\n')
            written.append(init)
    return written


def _protobuf_requirement() -> str:
    """protobuf>=X, X being the version of the generated code.

    The generated modules raise at import time under an older protobuf
    runtime, so pip must know the floor instead of the user finding out.
    """
    try:
        with tempfile.TemporaryDirectory() as tmp:
            _protoc(Path(tmp), _proto_closure())
            gen = (Path(tmp) / ENTRY).with_name("driftd_pb2.py").read_text(encoding="utf-8")
    except SystemExit as e:
        print(f"driftd-client: warning: {e}; requiring protobuf>={PROTOBUF_FLOOR}", file=sys.stderr)
        return f"protobuf>={PROTOBUF_FLOOR}"
    m = re.search(r"^# Protobuf Python Version: (\d+\.\d+\.\d+)", gen, re.MULTILINE)
    return f"protobuf>={m.group(1)}" if m else f"protobuf>={PROTOBUF_FLOOR}"


class BuildPyWithProtos(build_py):
    """build_py that also generates driftd_client/_proto from the proto files."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            # Editable installs import from the source tree (git-ignored there).
            target = HERE / "driftd_client" / "_proto"
        else:
            target = Path(self.build_lib) / "driftd_client" / "_proto"
        self._generated = [str(p) for p in generate(target)]

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return [*super().get_outputs(include_bytecode), *getattr(self, "_generated", [])]


setup(
    cmdclass={"build_py": BuildPyWithProtos},
    install_requires=["grpcio>=1.50", _protobuf_requirement()],
)
