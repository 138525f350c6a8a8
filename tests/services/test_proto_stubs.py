"""The committed stubs in specserve/v1 are exactly what scripts/gen-proto.sh generates from proto/."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# lines that record the generator's version, not the contract
DECLARATION = r"\s*(message|service|enum|rpc|oneof)\s+\w+|\s*(optional |repeated )?([\w.]+ )?\w+ = \d+;"
VERSION_LINES = re.compile(r"^(# Protobuf Python Version:.*|GRPC_GENERATED_VERSION = .*|\s+\d+,)$", re.M)


def normalized(path: Path) -> str:
    return VERSION_LINES.sub("", path.read_text())


def test_generated_stubs_have_not_drifted_from_the_protos(tmp_path):
    subprocess.run(["bash", str(ROOT / "scripts/gen-proto.sh"), str(tmp_path)], check=True, cwd=ROOT,
                   env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"})
    fresh = sorted(p.relative_to(tmp_path) for p in (tmp_path / "specserve/v1").iterdir())
    committed = sorted(p.relative_to(ROOT) for p in (ROOT / "specserve/v1").iterdir()
                       if p.name.endswith(("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")))
    assert fresh == committed, "run scripts/gen-proto.sh: the set of generated files changed"
    stale = [str(p) for p in fresh if normalized(tmp_path / p) != normalized(ROOT / p)]
    assert not stale, f"run scripts/gen-proto.sh and commit the result: {stale} differ from proto/"


def test_every_message_field_and_rpc_is_documented():
    undocumented = []
    for proto in sorted((ROOT / "proto/specserve/v1").glob("*.proto")):
        lines = proto.read_text().splitlines()
        for i, line in enumerate(lines):
            declares = re.match(DECLARATION, line)
            if declares and not lines[i - 1].strip().startswith("//"):
                undocumented.append(f"{proto.name}:{i + 1}: {line.strip()}")
    assert not undocumented, "\n".join(undocumented)
